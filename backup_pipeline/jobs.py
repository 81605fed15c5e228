"""The backup job: one partition per request, from the platform's rows to an emailed link.

Each op is one step of the run; what the step does lives in the module of its concern
(datasets.export, archive.plan, archive.assembly, delivery). Ops hand on small records: a
target of ids, staged keys, counts and checksums, never data.
"""

# No `from __future__ import annotations` here: Dagster reads the ops' context annotations as
# real types and refuses them as strings.

import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import dagster as dg
from dagster import OpExecutionContext

from backup_pipeline import platform as db
from backup_pipeline.archive.plan import FilePlan, stage_plan
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.base import Dataset
from backup_pipeline.datasets.export import (
    ExportResult,
    export_dataset,
    record_staged_export,
    staged_exports,
)
from backup_pipeline.datasets.parallel import (
    DatasetExportFailed,
    WorkbookExports,
    worker_count,
    yield_to_the_slowest_workbook,
)
from backup_pipeline.datasets.parallel import progress as export_progress
from backup_pipeline.platform import migrations
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.rules.archive_names import archive_key
from backup_pipeline.rules.spanish import to_clinic_time
from backup_pipeline.rules.target import REQUEST_TAG, BackupTarget
from backup_pipeline.services.archive import AssembledArchive, build_archive, kept_archive
from backup_pipeline.services.delivery import DeliveryRefused, deliver, emailed_archive
from backup_pipeline.services.failures import AuthorizationRevoked, fail_if_revoked
from backup_pipeline.services.run_start import RequestFinished, RunRefused, begin_run
from backup_pipeline.step_failure import permanent
from backup_pipeline.storage import ObjectStore, StoreRefused

backup_partitions = dg.DynamicPartitionsDefinition(name="backup_requests")

BACKUP_JOB_NAME = "backup_job"
# On every backup run, however launched: the run queue gives backups at most their own share of
# its slots (dagster.yaml, deploy/dagster.yaml), so housekeeping and alerts never wait behind them.
KIND_TAG = "backup/kind"

T = TypeVar("T")

# Refusals that no retry can heal.
_NOT_RETRIED = (DeliveryRefused, StoreRefused, AuthorizationRevoked, RunRefused)


def _permanent(call: Callable[[], T]) -> T:
    """Run `call`, turning a refusal that no retry can heal into a failure that is not retried,
    named for its cause and saying what to do next."""
    try:
        return call()
    except _NOT_RETRIED as exc:
        raise permanent(exc) from exc


def _request_id(context: OpExecutionContext) -> int:
    try:
        return int(context.partition_key)
    except ValueError as exc:
        raise dg.Failure(
            f"partition key {context.partition_key!r} is not a request id", allow_retries=False
        ) from exc


@dg.op(
    description=(
        "Marks the request running; checks it exists, may still run, and that its requester is "
        "still authorised. A request already delivered, expired or refused: the run ends here, "
        "successfully, saying so (the later steps are skipped)."
    ),
    out=dg.Out(BackupTarget, is_required=False),
)
def start_backup(
    context: OpExecutionContext,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    mailer: MailerResource,
) -> Iterator[dg.Output[BackupTarget]]:
    request_id = _request_id(context)
    engine = platform_db.get_engine()
    try:
        migrations.require_current(engine)
    except migrations.SchemaBehind as exc:
        # The failure sensor leaves the request as it is while this holds.
        raise permanent(exc) from exc
    try:
        target = begin_run(
            engine,
            mailer.get_mailer(),
            archives.get_store(),
            request_id=request_id,
            run_id=context.run_id,
        )
    except RequestFinished as finished:
        # A re-execution from the UI, or a run a refusal could not cancel in time: it succeeds
        # with nothing done, so the Partitions page stays green where the backup was delivered.
        context.log.info(str(finished))
        return
    except _NOT_RETRIED as exc:
        raise permanent(exc) from exc
    yield dg.Output(
        target,
        metadata={"request_id": request_id, "subscription_id": target.subscription_id},
    )


@dg.op(description="Lists every attachment and CFDI file with its safe path in the archive.")
def plan_archive_files(
    context: OpExecutionContext,
    target: BackupTarget,
    platform_db: PlatformDatabaseResource,
    files: ObjectStoreResource,
    archives: ObjectStoreResource,
) -> FilePlan:
    with platform_db.get_engine().connect() as conn:
        plan = stage_plan(
            conn,
            target.subscription_id,
            archives.get_store(),
            f"{target.staging_prefix}/plan.jsonl",
        )
    if plan.files:
        # A missing files store would make every file "not found" and send the backup out empty,
        # using up one of the clinic's two: fail it instead (a failure does not count).
        _permanent(files.get_store().check_reachable)
    context.add_output_metadata(
        {"files": plan.files, "expected_bytes": plan.expected_bytes, **plan.by_kind}
    )
    return plan


def export_output(dataset: Dataset) -> str:
    """The output of assemble_backup that reports one dataset's workbook."""
    return f"export_{dataset.name}"


ARCHIVE_OUTPUT = "archive"


@dg.op(
    description=(
        "Renders every workbook (one output each, in worker processes) while it streams the "
        "files into the zip in the archives store, then adds the workbooks, LEEME.txt and "
        "SHA256SUMS."
    ),
    out={
        **{
            export_output(dataset): dg.Out(
                ExportResult,
                description=f"{dataset.archive_path}: {dataset.description}",
                is_required=False,
            )
            for dataset in DATASETS
        },
        ARCHIVE_OUTPUT: dg.Out(AssembledArchive),
    },
    tags={"kind": "excel"},
)
def assemble_backup(
    context: OpExecutionContext,
    target: BackupTarget,
    plan: FilePlan,
    platform_db: PlatformDatabaseResource,
    files: ObjectStoreResource,
    archives: ObjectStoreResource,
    policy: BackupPolicyResource,
) -> Iterator[dg.Output]:
    engine = platform_db.get_engine()
    with engine.connect() as conn:
        subscription = db.get_subscription(conn, target.subscription_id)
        request = db.get_request(conn, target.request_id)
    if subscription is None:
        raise dg.Failure(f"subscription {target.subscription_id} vanished", allow_retries=False)
    local_day = to_clinic_time(target.requested_at, target.timezone).date()
    key = archive_key(target.subscription_id, target.request_id, subscription.name, local_day)
    archives_store = archives.get_store()
    emailed = emailed_archive(engine, archives_store, request, key)
    if emailed is not None:
        context.log.info(
            f"request {target.request_id}: its link was emailed and the archive is intact; "
            "keeping it instead of building another"
        )
        assembled = kept_archive(emailed)
    else:
        assembled = yield from _export_and_zip(
            context, target, plan, subscription.name, key, platform_db, files, archives, policy
        )
    yield dg.Output(assembled, ARCHIVE_OUTPUT, metadata=_archive_metadata(assembled))


def _export_and_zip(
    context: OpExecutionContext,
    target: BackupTarget,
    plan: FilePlan,
    clinic_name: str,
    key: str,
    platform_db: PlatformDatabaseResource,
    files: ObjectStoreResource,
    archives: ObjectStoreResource,
    policy: BackupPolicyResource,
) -> Generator[dg.Output, None, AssembledArchive]:
    """The workbooks render in worker processes while a thread zips the files; each workbook is
    reported as its own output when it is staged."""
    engine = platform_db.get_engine()
    files_store, archives_store = files.get_store(), archives.get_store()
    # Set in each worker before its first export: its own connections (see datasets.parallel).
    worker_stores: dict[str, ObjectStore] = {}

    def worker_setup() -> None:
        engine.dispose(close=False)  # the run's pooled connections are not the worker's
        worker_stores["files"] = files.open_new_store()
        worker_stores["archives"] = archives.open_new_store()

    def export_one(dataset: Dataset) -> ExportResult:
        started = time.perf_counter()
        with engine.connect() as conn:
            result = export_dataset(
                dataset,
                connection=conn,
                subscription_id=target.subscription_id,
                timezone=target.timezone,
                files=worker_stores.get("files", files_store),
                archives=worker_stores.get("archives", archives_store),
                staging_prefix=target.staging_prefix,
                # The request's time: a re-run renders the same rows into the same bytes.
                created=target.requested_at,
                progress=export_progress,
                # The attachments index lists the files as this run's plan names and splits them.
                plan=plan,
                part_size=policy.part_size_bytes,
            )
        # Noted as soon as it is staged, by whoever staged it: a retry of this step keeps it.
        record_staged_export(
            worker_stores.get("archives", archives_store),
            target.staging_prefix,
            context.run_id,
            result,
            time.perf_counter() - started,
        )
        return result

    workers = worker_count(policy.export_workers)
    if workers:
        engine.dispose()  # no pooled connection crosses the fork
    zipping = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-zip")
    unwanted = threading.Event()  # the zip stops between two files once this is set
    # A retry of this step (a storage error in the zip) keeps the workbooks an earlier attempt of
    # the same run staged; another run renders them again, from the data as it is then.
    staged_before = staged_exports(archives_store, target.staging_prefix, context.run_id)
    with WorkbookExports(
        DATASETS,
        workers=workers,
        export_one=export_one,
        worker_setup=worker_setup,
        done=staged_before,
        priority=lambda dataset: dataset.render_cost,
    ) as exports:
        context.log.info(
            f"rendering {len(DATASETS) - len(staged_before)} workbooks with {exports.workers} "
            f"workers ({len(staged_before)} staged by an earlier attempt)"
        )

        def zip_all() -> AssembledArchive:
            if workers:
                yield_to_the_slowest_workbook()  # this thread only
            return build_archive(
                archives=archives_store,
                files=files_store,
                key=key,
                clinic_name=clinic_name,
                timezone=target.timezone,
                generated_at_local=to_clinic_time(db.utcnow(), target.timezone),
                exports=exports.all_results,
                plan=plan,
                part_size=policy.part_size_bytes,
                cancelled=unwanted,
            )

        # In this process with no workers: the workbooks first, then the zip, one at a time.
        archive = zipping.submit(zip_all) if workers else None
        try:
            # A failing zip is seen at once, not after the slowest workbook.
            for rendered in exports.completed(watch=archive):
                result = rendered.result
                yield dg.Output(
                    result,
                    export_output(rendered.dataset),
                    metadata={
                        "rows": result.rows,
                        "sheets": result.sheets,
                        "workbook_bytes": result.entries[0].size,
                        "long_text_files": result.long_text_files,
                        "seconds": round(rendered.seconds, 3),
                        "staged_by_an_earlier_attempt": rendered.reused,
                    },
                )
            return archive.result() if archive is not None else zip_all()
        except DatasetExportFailed as exc:
            raise dg.Failure(
                str(exc), metadata={"dataset": exc.dataset, "error": exc.cause_class}
            ) from exc
        finally:
            # On the way out with an error (a workbook failed, the run was cancelled): workers
            # still rendering are killed, and the zip, between two files or waiting for the
            # workbooks, gives up and discards what it wrote before this step ends.
            unwanted.set()
            exports.stop()
            zipping.shutdown(wait=True)


def _archive_metadata(assembled: AssembledArchive) -> dict[str, object]:
    parts = assembled.parts
    return {
        "archive_key": assembled.result.key,
        "archive_bytes": assembled.size,
        "archive_sha256": assembled.result.sha256,
        "archive_parts": len(parts),
        # Parts are split by the platform's recorded sizes and part 1 keeps room for the
        # workbooks: over the part size means many sizes were unrecorded, or the workbooks
        # outgrew their room (archive.parts.workbook_reserve).
        "largest_part_bytes": max(part.size for part in parts),
        "kept_emailed_archive": assembled.kept_emailed,
        "zip_entries": sum(part.entries for part in parts),
        "files_copied": sum(part.files_copied for part in parts),
        "file_bytes": sum(part.file_bytes for part in parts),
        "missing_files": sum(len(part.missing) for part in parts),
        "checksum_mismatches": sum(part.checksum_mismatches for part in parts),
    }


@dg.op(description="Signs the link, emails the requester once, and marks the request delivered.")
def deliver_backup(
    context: OpExecutionContext,
    target: BackupTarget,
    archive: AssembledArchive,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    mailer: MailerResource,
    policy: BackupPolicyResource,
) -> None:
    store = archives.get_store()
    # Again right before the link is signed: the authorisation may have gone during the run.
    _permanent(
        lambda: fail_if_revoked(
            platform_db.get_engine(),
            mailer.get_mailer(),
            store,
            request_id=target.request_id,
            run_id=context.run_id,
            checked_at="before its link was sent",
            archive_keys=[part.key for part in archive.parts],
        )
    )
    delivered = _permanent(
        lambda: deliver(
            platform_db.get_engine(),
            store,
            mailer.get_mailer(),
            request_id=target.request_id,
            run_id=context.run_id,
            archive=archive,
            link_ttl=policy.link_ttl,
        )
    )
    if not delivered.email_sent_now:
        context.log.info(f"request {target.request_id}: email already sent, not sending again")
    store.delete_prefix(target.staging_prefix)
    context.add_output_metadata(
        {
            "archive_key": archive.result.key,
            "archive_bytes": archive.result.size,
            "archive_sha256": archive.result.sha256,
            "link_expires_at": delivered.expires_at.isoformat() + "Z",
            "email_sent_now": delivered.email_sent_now,
        }
    )


@dg.graph(
    description=(
        "Backs up one clinic for one request (partition = backup_requests.id): workbooks, files "
        "and invoices into one zip in the archives store, then a signed link by email."
    )
)
def backup_graph() -> None:
    target = start_backup()
    plan = plan_archive_files(target)
    outputs = assemble_backup(target, plan)
    deliver_backup(target, getattr(outputs, ARCHIVE_OUTPUT))


def build_backup_job(retry_policy: dg.RetryPolicy) -> dg.JobDefinition:
    """The backup job with the deployment's retry policy on every op."""
    return backup_graph.to_job(
        name=BACKUP_JOB_NAME,
        # Every run of a partition names its request, however it is launched (the sensor, the
        # UI's partition launcher, a backfill): the run queue admits one run per request.
        config=dg.PartitionedConfig(
            partitions_def=backup_partitions,
            run_config_for_partition_key_fn=lambda _key: {},
            tags_for_partition_key_fn=lambda key: {REQUEST_TAG: key},
        ),
        op_retry_policy=retry_policy,
        tags={"team": "backups", KIND_TAG: "backup"},
        # In one process: a process per op (the multiprocess executor) imports Dagster and pandas
        # again for each step, which cost 2-5 s and ~250 MB apiece and made the backup slower and
        # three times as large in memory up to the large profile (bench/RESULTS.md). Both cores
        # are used inside assemble_backup instead (datasets.parallel).
        executor_def=dg.in_process_executor,
    )
