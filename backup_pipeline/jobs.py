"""The backup job: one partition per request, from the platform's rows to an emailed link."""

# No `from __future__ import annotations` here: Dagster reads the ops' context annotations as
# real types and refuses them as strings.

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster import OpExecutionContext
from slugify import slugify

from backup_pipeline import mail
from backup_pipeline.archive.entries import ArchiveResult, MissingFile, PlannedFile, StagedEntry
from backup_pipeline.archive.leeme import LeemeFacts, leeme_text
from backup_pipeline.archive.plan import plan_files
from backup_pipeline.archive.zipper import assemble_archive
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.base import Column, Dataset, ExtractContext, Extraction, Kind
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources import platform_db as db
from backup_pipeline.resources.mailer import MailerResource, MailError, OutgoingEmail
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.spanish import clinic_zone, to_clinic_time
from backup_pipeline.staging import stage_file
from backup_pipeline.storage import ObjectNotFound, ObjectStore, StoreRefused
from backup_pipeline.workbook import render_workbook

backup_partitions = dg.DynamicPartitionsDefinition(name="backup_requests")

REQUEST_TAG = "backup/request_id"
SUBSCRIPTION_TAG = "backup/subscription_id"

# Storage 5xx, timeouts and dropped connections heal on their own; permanent errors raise
# dg.Failure(allow_retries=False) instead so that nothing is retried forever.
TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=int(os.environ.get("BACKUP_OP_MAX_RETRIES", "3")),
    delay=float(os.environ.get("BACKUP_RETRY_DELAY_SECONDS", "5")),
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)


@dataclass(frozen=True)
class BackupTarget:
    """What every op of a run needs to know about its request: ids, never personal data."""

    request_id: int
    subscription_id: int
    timezone: str
    requested_at: datetime
    staging_prefix: str


@dataclass(frozen=True)
class ExportResult:
    dataset: str
    archive_path: str
    description: str
    rows: int
    entries: list[StagedEntry] = field(default_factory=list)


@dataclass(frozen=True)
class FilePlan:
    key: str  # JSON lines of PlannedFile in the archives store's staging area
    files: int
    expected_bytes: int


def archive_file_name(clinic_name: str, day: datetime) -> str:
    slug = slugify(clinic_name, max_length=60, word_boundary=True) or "clinica"
    return f"respaldo_{slug}_{day:%Y-%m-%d}.zip"


def archive_key(target: BackupTarget, clinic_name: str) -> str:
    """Stable per request, so a re-run replaces its own archive instead of leaving a second one."""
    local_day = to_clinic_time(target.requested_at, target.timezone)
    return (
        f"respaldos/{target.subscription_id}/{target.request_id}/"
        f"{archive_file_name(clinic_name, local_day)}"
    )


def _request_id(context: OpExecutionContext) -> int:
    try:
        return int(context.partition_key)
    except ValueError as exc:
        raise dg.Failure(
            f"partition key {context.partition_key!r} is not a request id", allow_retries=False
        ) from exc


@dg.op(retry_policy=TRANSIENT_RETRY, description="Marks the request running; checks it exists.")
def start_backup(
    context: OpExecutionContext, platform_db: PlatformDatabaseResource
) -> BackupTarget:
    request_id = _request_id(context)
    with platform_db.get_engine().begin() as conn:
        request = db.get_request(conn, request_id)
        if request is None:
            raise dg.Failure(f"backup request {request_id} does not exist", allow_retries=False)
        subscription = db.get_subscription(conn, request.subscription_id)
        if subscription is None:
            raise dg.Failure(
                f"subscription {request.subscription_id} of request {request_id} does not exist",
                allow_retries=False,
            )
        if request.status in ("delivered", "expired", "rejected"):
            raise dg.Failure(
                f"request {request_id} is {request.status}; a new run would not change it "
                "(use `backup-pipeline resend-link` for a fresh link)",
                allow_retries=False,
            )
        db.mark_running(conn, request_id, context.run_id)
    context.add_output_metadata(
        {"request_id": request_id, "subscription_id": request.subscription_id}
    )
    return BackupTarget(
        request_id=request_id,
        subscription_id=request.subscription_id,
        # Resolved once here: a zone name the platform let through with a typo falls back to the
        # default (spanish.clinic_zone) instead of failing every op that shows a date.
        timezone=clinic_zone(subscription.timezone).key,
        requested_at=request.requested_at,
        staging_prefix=f"staging/{request_id}/{context.run_id}",
    )


def build_export_op(dataset: Dataset) -> dg.OpDefinition:
    """One op per dataset: extract in chunks, render the workbook, stage it (and its long texts)."""

    @dg.op(
        name=f"export_{dataset.name}",
        retry_policy=TRANSIENT_RETRY,
        description=f"Writes {dataset.archive_path}: {dataset.description}",
        tags={"kind": "excel"},
    )
    def export(
        context: OpExecutionContext,
        target: BackupTarget,
        platform_db: PlatformDatabaseResource,
        files: ObjectStoreResource,
        archives: ObjectStoreResource,
    ) -> ExportResult:
        archives_store = archives.get_store()
        with (
            tempfile.TemporaryDirectory(prefix=f"bp-{dataset.name}-") as tmp,
            platform_db.get_engine().connect() as conn,
        ):
            workdir = Path(tmp)
            extraction = dataset.extract(
                ExtractContext(
                    connection=conn,
                    subscription_id=target.subscription_id,
                    files=files.get_store(),
                    timezone=target.timezone,
                )
            )
            rendered = render_workbook(
                extraction,
                path=workdir / Path(dataset.archive_path).name,
                sheet_title=dataset.sheet_title,
                timezone=target.timezone,
                archive_path=dataset.archive_path,
                overflow_dir=workdir / "overflow",
            )
            entries = [
                stage_file(
                    archives_store, target.staging_prefix, dataset.archive_path, rendered.path
                )
            ]
            entries += [
                stage_file(archives_store, target.staging_prefix, o.archive_path, o.local_path)
                for o in rendered.overflow_files
            ]
        context.add_output_metadata(
            {
                "rows": rendered.rows,
                "sheets": len(rendered.sheets),
                "workbook_bytes": entries[0].size,
                "long_text_files": len(rendered.overflow_files),
            }
        )
        return ExportResult(
            dataset=dataset.name,
            archive_path=dataset.archive_path,
            description=dataset.description,
            rows=rendered.rows,
            entries=entries,
        )

    return export


EXPORT_OPS = [build_export_op(dataset) for dataset in DATASETS]


@dg.op(
    retry_policy=TRANSIENT_RETRY,
    description="Lists every attachment and CFDI file with its safe path in the archive.",
)
def plan_archive_files(
    context: OpExecutionContext,
    target: BackupTarget,
    platform_db: PlatformDatabaseResource,
    files: ObjectStoreResource,
    archives: ObjectStoreResource,
) -> FilePlan:
    key = f"{target.staging_prefix}/plan.jsonl"
    count = expected = 0
    by_kind: dict[str, int] = {}
    with (
        platform_db.get_engine().connect() as conn,
        archives.get_store().open_write(key, "application/jsonl") as out,
    ):
        for planned in plan_files(conn, target.subscription_id):
            out.write(json.dumps(planned.to_dict(), ensure_ascii=False).encode() + b"\n")
            count += 1
            expected += planned.expected_size or 0
            by_kind[planned.kind] = by_kind.get(planned.kind, 0) + 1
    if count:
        try:
            files.get_store().check_reachable()
        except StoreRefused as exc:
            # Every file would read as "not found" and the backup would go out empty, using up
            # one of the clinic's two: fail it (a failure does not count) and tell support.
            raise dg.Failure(str(exc), allow_retries=False) from exc
    context.add_output_metadata({"files": count, "expected_bytes": expected, **by_kind})
    return FilePlan(key=key, files=count, expected_bytes=expected)


def _read_plan(archives_store: ObjectStore, plan: FilePlan) -> Iterator[PlannedFile]:
    # Through a text wrapper, which reads in chunks: iterating the GCS reader's lines directly
    # asks it for one byte at a time (about 4 s for a large clinic's plan, per the benchmark).
    with (
        archives_store.open_read(plan.key) as src,
        io.TextIOWrapper(src, encoding="utf-8") as lines,
    ):
        for line in lines:
            if line.strip():
                yield PlannedFile.from_dict(json.loads(line))


MISSING_COLUMNS = (
    Column("archive_path", "Archivo en el respaldo", Kind.TEXT, 70),
    Column("kind", "Tipo", Kind.TEXT, 18),
    Column("patient_id", "ID paciente", Kind.INTEGER),
    Column("record_id", "ID del registro", Kind.INTEGER),
    Column("reason", "Motivo", Kind.TEXT, 60),
)
MISSING_KIND_LABELS = {
    "adjunto": "Archivo adjunto",
    "cfdi_xml": "XML de CFDI",
    "cfdi_pdf": "PDF de CFDI",
}


def render_missing_files(missing: list[MissingFile], workdir: Path, timezone: str) -> Path | None:
    """archivos_no_incluidos.xlsx: which files could not be copied and why."""
    if not missing:
        return None
    frame = pd.DataFrame(
        [
            {
                "archive_path": m.archive_path,
                "kind": MISSING_KIND_LABELS.get(m.kind, m.kind),
                "patient_id": m.patient_id,
                "record_id": m.record_id,
                "reason": m.reason,
            }
            for m in missing
        ]
    )
    path = workdir / "archivos_no_incluidos.xlsx"
    render_workbook(
        Extraction(columns=MISSING_COLUMNS, chunks=iter([frame])),
        path=path,
        sheet_title="Archivos no incluidos",
        timezone=timezone,
        archive_path="archivos_no_incluidos.xlsx",
        overflow_dir=workdir / "overflow-missing",
    )
    return path


@dataclass(frozen=True)
class AssembledArchive:
    result: ArchiveResult
    download_name: str
    contents: list[tuple[str, int]]  # (Spanish label, count) for the email


def _ordered_entries(exports: list[ExportResult]) -> list[StagedEntry]:
    # Workbooks in the order DATASETS declares them, whatever order the ops finished in.
    order = {dataset.name: i for i, dataset in enumerate(DATASETS)}
    ordered = sorted(exports, key=lambda e: order.get(e.dataset, len(order)))
    return [entry for export in ordered for entry in export.entries]


@dg.op(
    retry_policy=TRANSIENT_RETRY,
    description="Streams the zip into the archives store: workbooks, files, LEEME.txt, SHA256SUMS.",
)
def assemble_backup(
    context: OpExecutionContext,
    target: BackupTarget,
    exports: list[ExportResult],
    plan: FilePlan,
    platform_db: PlatformDatabaseResource,
    files: ObjectStoreResource,
    archives: ObjectStoreResource,
) -> AssembledArchive:
    with platform_db.get_engine().connect() as conn:
        subscription = db.get_subscription(conn, target.subscription_id)
        request = db.get_request(conn, target.request_id)
    if subscription is None:
        raise dg.Failure(f"subscription {target.subscription_id} vanished", allow_retries=False)
    key = archive_key(target, subscription.name)
    archives_store = archives.get_store()
    emailed = _emailed_archive(archives_store, request, key)
    if emailed is not None:
        context.log.info(
            f"request {target.request_id}: its link was emailed and the archive is intact; "
            "keeping it instead of building another"
        )
        context.add_output_metadata(
            {
                "archive_key": emailed.key,
                "archive_bytes": emailed.size,
                "archive_sha256": emailed.sha256,
                "kept_emailed_archive": True,
            }
        )
        return AssembledArchive(result=emailed, download_name=key.rsplit("/", 1)[-1], contents=[])
    generated_at = to_clinic_time(db.utcnow(), target.timezone)
    workbook_counts = [(e.archive_path, e.description, e.rows) for e in exports]
    rows_by_dataset = {e.dataset: e.rows for e in exports}

    def facts(files_copied: int, file_bytes: int, missing_count: int) -> LeemeFacts:
        return LeemeFacts(
            clinic_name=subscription.name,
            generated_at_local=generated_at,
            timezone=target.timezone,
            workbooks=workbook_counts,
            files_copied=files_copied,
            file_bytes=file_bytes,
            missing_count=missing_count,
            invoices_issued=rows_by_dataset.get("invoices_issued", 0),
            invoices_received=rows_by_dataset.get("invoices_received", 0),
            long_text_files=sum(len(e.entries) - 1 for e in exports),
        )

    with tempfile.TemporaryDirectory(prefix="bp-assemble-") as tmp:
        result = assemble_archive(
            archives=archives_store,
            files=files.get_store(),
            final_key=key,
            staged=_ordered_entries(exports),
            planned=_read_plan(archives_store, plan),
            render_missing=lambda missing, workdir: render_missing_files(
                missing, workdir, target.timezone
            ),
            leeme=lambda f: leeme_text(facts(f.files_copied, f.file_bytes, f.missing_count)),
            workdir=Path(tmp),
            modified_at=generated_at.replace(tzinfo=None),
        )
    context.add_output_metadata(
        {
            "archive_key": result.key,
            "archive_bytes": result.size,
            "archive_sha256": result.sha256,
            "zip_entries": result.entries,
            "files_copied": result.files_copied,
            "file_bytes": result.file_bytes,
            "missing_files": len(result.missing),
            "checksum_mismatches": result.checksum_mismatches,
        }
    )
    contents = [(_content_label(e), e.rows) for e in exports]
    contents.append(("Archivos adjuntos y comprobantes copiados", result.files_copied))
    if result.missing:
        contents.append(("Archivos que no se pudieron incluir", len(result.missing)))
    return AssembledArchive(result=result, download_name=key.rsplit("/", 1)[-1], contents=contents)


def _emailed_archive(
    store: ObjectStore, request: db.BackupRequest | None, key: str
) -> ArchiveResult | None:
    """The archive whose link and SHA-256 the requester already got, if it is still there whole.

    A run killed after the email but before the request was marked delivered is re-run; a new
    zip (new time stamps) would not match the checksum in that email, and no second email goes.
    Only key, size and sha256 are filled in: nothing downstream needs the counts.
    """
    if (
        request is None
        or request.email_sent_at is None
        or request.archive_key != key
        or not request.archive_sha256
    ):
        return None
    digest = hashlib.sha256()
    size = 0
    try:
        with store.open_read(key) as src:
            while chunk := src.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
    except ObjectNotFound:
        return None
    if size != request.archive_size_bytes or digest.hexdigest() != request.archive_sha256:
        return None
    return ArchiveResult(
        key=key, size=size, sha256=digest.hexdigest(), entries=0, files_copied=0, file_bytes=0
    )


def _content_label(export: ExportResult) -> str:
    dataset = next((d for d in DATASETS if d.name == export.dataset), None)
    return dataset.sheet_title if dataset else export.dataset


@dg.op(
    retry_policy=TRANSIENT_RETRY,
    description="Signs the link, emails the requester once, and marks the request delivered.",
)
def deliver_backup(
    context: OpExecutionContext,
    target: BackupTarget,
    archive: AssembledArchive,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    mailer: MailerResource,
    policy: BackupPolicyResource,
) -> None:
    engine = platform_db.get_engine()
    with engine.connect() as conn:
        request = db.get_request(conn, target.request_id)
        subscription = db.get_subscription(conn, target.subscription_id)
        requester = db.get_requester(conn, request.requested_by_user_id) if request else None
    if request is None or subscription is None or requester is None:
        raise dg.Failure(
            f"request {target.request_id}: request, subscription or requester row is gone",
            allow_retries=False,
        )
    store = archives.get_store()
    result = archive.result
    if request.email_sent_at is None:
        expires_at = db.utcnow() + policy.link_ttl
        link = store.signed_url(result.key, policy.link_ttl, archive.download_name)
    else:
        # The requester already has a link and was told when it stops working: keep that.
        expires_at = request.link_expires_at or db.utcnow() + policy.link_ttl
    with engine.begin() as conn:
        db.record_archive(
            conn,
            target.request_id,
            archive_key=result.key,
            size=result.size,
            sha256=result.sha256,
            link_expires_at=expires_at,
        )
    email_sent = False
    if request.email_sent_at is None:
        email = link_email(
            mailer,
            requester=requester,
            subscription=subscription,
            request_id=target.request_id,
            link=link,
            expires_at=expires_at,
            size_bytes=result.size,
            sha256=result.sha256,
            contents=archive.contents,
        )
        message_id = send_or_fail(mailer, email)
        with engine.begin() as conn:
            db.record_email_sent(
                conn, target.request_id, sent_at=db.utcnow(), message_id=message_id
            )
        email_sent = True
    else:
        context.log.info(f"request {target.request_id}: email already sent, not sending again")
    with engine.begin() as conn:
        db.mark_delivered(conn, target.request_id, context.run_id)
    store.delete_prefix(target.staging_prefix)
    context.add_output_metadata(
        {
            "archive_key": result.key,
            "archive_bytes": result.size,
            "archive_sha256": result.sha256,
            "link_expires_at": expires_at.isoformat() + "Z",
            "email_sent_now": email_sent,
        }
    )


def link_email(
    mailer: MailerResource,
    *,
    requester: db.Requester,
    subscription: db.Subscription,
    request_id: int,
    link: str,
    expires_at: datetime,
    size_bytes: int,
    sha256: str,
    contents: list[tuple[str, int]],
) -> OutgoingEmail:
    """The email with the download link, for a delivery and for a re-sent link alike."""
    zone = clinic_zone(subscription.timezone)
    return mail.delivered_email(
        to=requester.email,  # the requester's address now, not when the request was made
        clinic_name=subscription.name,
        link=link,
        expires_at_local=to_clinic_time(expires_at, zone.key),
        timezone_label=zone.key,
        size_bytes=size_bytes,
        sha256=sha256,
        contents=contents,
        support_email=mailer.support_email,
        from_email=mailer.from_email,
        request_id=request_id,
    )


def send_or_fail(mailer: MailerResource, email: OutgoingEmail) -> str:
    """Send; a transient refusal raises for the op's retry policy, a permanent one fails for good."""
    try:
        return mailer.get_mailer().send(email)
    except MailError as exc:
        if exc.transient:
            raise
        raise dg.Failure(
            f"the mail provider refused the message permanently (status {exc.status}); "
            "check the requester's address in the platform",
            allow_retries=False,
        ) from exc


@dg.job(
    partitions_def=backup_partitions,
    description=(
        "Backs up one clinic for one request (partition = backup_requests.id): workbooks, files "
        "and invoices into one zip in the archives store, then a signed link by email."
    ),
    tags={"team": "backups"},
    # In one process: a process per op (the multiprocess executor) imports Dagster and pandas
    # again for each of the 11 steps, which cost 2-5 s and ~250 MB apiece and made the backup
    # slower and three times as large in memory up to the large profile (bench/RESULTS.md).
    executor_def=dg.in_process_executor,
)
def backup_job() -> None:
    target = start_backup()
    exports = [export(target) for export in EXPORT_OPS]
    plan = plan_archive_files(target)
    archive = assemble_backup(target, exports, plan)
    deliver_backup(target, archive)
