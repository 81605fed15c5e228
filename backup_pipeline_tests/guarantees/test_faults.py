"""Faults on the way: GCS failing and stalling, the mail provider refusing, the database dropping a read."""

from __future__ import annotations

import functools
import hashlib
import io
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import dagster as dg
import pytest
from openpyxl import load_workbook
from sqlalchemy import Engine, create_engine, select, text

from backup_pipeline import platform as db
from backup_pipeline.archive.plan import plan_files
from backup_pipeline.archive.verify import SHA256SUMS, verify_zip
from backup_pipeline.archive.zipper import REASON_NOT_FOUND
from backup_pipeline.datasets import consultations
from backup_pipeline.datasets.base import ExtractContext, Extraction
from backup_pipeline.operations import RunOutcome, execute_request
from backup_pipeline.platform import tables
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.rules.archive_entries import KIND_CFDI_XML
from backup_pipeline.rules.leeme import MISSING_REPORT_PATH
from backup_pipeline.rules.request_state import BackupRequest
from backup_pipeline.storage import ObjectNotFound, ObjectStore, StoreRefused
from backup_pipeline.storage.gcs import GcsStore
from backup_pipeline_tests.support.acceptance import signing_credentials
from backup_pipeline_tests.support.faultproxy import (
    KINDS,
    READ,
    UPLOAD_CHUNK,
    FaultPlan,
    FaultProxy,
)
from backup_pipeline_tests.support.gcs import EMULATOR_PROJECT
from backup_pipeline_tests.support.platform import (
    ON_POSTGRES,
    WITH_SENDGRID,
    Backends,
    Clinic,
    Platform,
    new_bucket_url,
    open_platform,
)
from backup_pipeline_tests.support.sendgrid import SendGridEndpoint, read_sendgrid

PATIENTS = 12
# The smallest chunk a resumable upload takes: the zip goes up in several chunks, and files
# larger than it are read in several ranges.
SMALL_CHUNK = 256 * 1024


# --- GCS behind the fault proxy ----------------------------------------------------------------


# A made-up service account with a real key: enough to sign V4 URLs offline; made once.
_signing_credentials = functools.cache(signing_credentials)


class EmulatorGcsResource(ObjectStoreResource):
    """The production GcsStore on the emulator (through STORAGE_EMULATOR_HOST), with credentials
    that can sign links and the smallest chunk size."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = self._open()

    def get_store(self) -> ObjectStore:
        if self._store is None:
            self._store = self._open()
        return self._store

    def _open(self) -> GcsStore:
        parts = urlsplit(self.url)
        return GcsStore(
            parts.netloc,
            parts.path,
            credentials=_signing_credentials(),
            project=EMULATOR_PROJECT,
            chunk_size=SMALL_CHUNK,
        )


@pytest.fixture
def gcs_platform(request: pytest.FixtureRequest, gcs_fault_proxy: FaultProxy) -> Platform:
    """A platform whose files and archives are in two emulator buckets behind the proxy."""
    files_url = f"{new_bucket_url('bp-fault')}/platform"
    archives_url = f"{new_bucket_url('bp-fault')}/backups"
    return open_platform(
        request,
        env={"BACKUP_FILES_URL": files_url, "BACKUP_ARCHIVES_URL": archives_url},
        resources={
            "files": EmulatorGcsResource(url=files_url),
            "archives": EmulatorGcsResource(url=archives_url),
        },
    )


@pytest.fixture
def gcs_clinic(gcs_platform: Platform) -> Clinic:
    (seeded,) = gcs_platform.seed(patients=PATIENTS, seed=11)
    return seeded


@dataclass
class Delivered:
    outcome: RunOutcome
    request: BackupRequest
    zip_bytes: bytes

    def sums(self) -> dict[str, str]:
        """SHA256SUMS as {entry: sha256}."""
        with zipfile.ZipFile(io.BytesIO(self.zip_bytes)) as zf:
            lines = zf.read(SHA256SUMS).decode().splitlines()
        return {line[66:]: line[:64] for line in lines}

    def missing_rows(self) -> list[tuple]:
        """The rows of archivos_no_incluidos.xlsx (none when it is not in the zip)."""
        with zipfile.ZipFile(io.BytesIO(self.zip_bytes)) as zf:
            if MISSING_REPORT_PATH not in zf.namelist():
                return []
            book = load_workbook(io.BytesIO(zf.read(MISSING_REPORT_PATH)), read_only=True)
            return list(book.active.iter_rows(min_row=2, values_only=True))

    def recomputed(self) -> dict[str, str]:
        with zipfile.ZipFile(io.BytesIO(self.zip_bytes)) as zf:
            return {
                name: hashlib.sha256(zf.read(name)).hexdigest()
                for name in zf.namelist()
                if name != SHA256SUMS
            }


def _back_up(platform: Platform, clinic: Clinic, proxy: FaultProxy, plan: FaultPlan) -> Delivered:
    request_id = platform.file_request(clinic)
    proxy.set_plan(plan)
    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance, platform.resources(), request_id, clinic.subscription_id
        )
    proxy.set_plan(FaultPlan.off())
    with platform.engine.connect() as conn:
        request = db.get_request(conn, request_id)
    assert request is not None
    data = platform.archives.get_bytes(request.archive_key) if request.archive_key else b""
    return Delivered(outcome, request, data)


def _is_platform_file(entry: str) -> bool:
    """Attachments, CFDI XML and PDF: bytes copied as they are, unlike the workbooks."""
    return entry.startswith("adjuntos/") or entry.split("/")[-2:-1] in (["xml"], ["pdf"])


@pytest.mark.slow
def test_backup_through_gcs_faults_copies_every_file_exactly_as_a_fault_free_run(
    gcs_platform: Platform, gcs_clinic: Clinic, gcs_fault_proxy: FaultProxy
):
    clean = _back_up(gcs_platform, gcs_clinic, gcs_fault_proxy, FaultPlan.off())
    assert not gcs_fault_proxy.injected

    faulty = _back_up(
        gcs_platform,
        gcs_clinic,
        gcs_fault_proxy,
        FaultPlan(seed=20260719, read_every=8, upload_every=4),
    )
    # The plan really hit both kinds of request with every kind of fault.
    assert gcs_fault_proxy.injected_kinds(READ) == set(KINDS), gcs_fault_proxy.injected
    assert gcs_fault_proxy.injected_kinds(UPLOAD_CHUNK) == set(KINDS), gcs_fault_proxy.injected

    for run in (clean, faulty):
        assert run.outcome.success and run.request.status == "delivered"
        assert hashlib.sha256(run.zip_bytes).hexdigest() == run.request.archive_sha256
        report = verify_zip(io.BytesIO(run.zip_bytes))
        assert report.ok, report.problems
        assert run.recomputed() == run.sums()  # every entry, recomputed, matches SHA256SUMS
    assert set(faulty.sums()) == set(clean.sums())
    copied = {k: v for k, v in clean.sums().items() if _is_platform_file(k)}
    assert len(copied) > 2 * PATIENTS  # attachments, XML and PDF of this clinic
    assert {k: v for k, v in faulty.sums().items() if _is_platform_file(k)} == copied
    # Files the platform itself lacks are missing from both, and nothing else.
    assert faulty.missing_rows() == clean.missing_rows()
    # One archive per request at its key, and nothing half-made beside it.
    keys = sorted(info.key for info in gcs_platform.archives.list("respaldos/"))
    assert keys == sorted([clean.request.archive_key, faulty.request.archive_key])
    assert len(list(gcs_platform.outbox.glob("*.eml"))) == 2


def test_each_platform_file_is_one_request_per_reader(
    gcs_platform: Platform, gcs_clinic: Clinic, gcs_fault_proxy: FaultProxy
):
    # On GCS each request waits tens of milliseconds before its first byte: the zip reads
    # each planned file with one GET (no metadata request, no read past the end), and the
    # invoice reports each CFDI XML with one more. Counted at the proxy, faults off.
    gcs_fault_proxy.requests.clear()
    run = _back_up(gcs_platform, gcs_clinic, gcs_fault_proxy, FaultPlan.off())
    assert run.outcome.success and run.request.status == "delivered"

    with gcs_platform.engine.connect() as conn:
        planned = list(plan_files(conn, gcs_clinic.subscription_id))
    expected: Counter[str] = Counter(quote(f"platform/{p.source_key}", safe="") for p in planned)
    expected.update(
        quote(f"platform/{p.source_key}", safe="") for p in planned if p.kind == KIND_CFDI_XML
    )
    per_object: Counter[str] = Counter()
    for method, path in gcs_fault_proxy.requests_naming("/o/platform%2F"):
        assert method == "GET"
        per_object[urlsplit(path).path.split("/o/", 1)[1]] += 1
    assert len(planned) > 2 * PATIENTS  # attachments, XML and PDF
    assert per_object == expected  # 1.0 request per object and reader


def test_a_file_deleted_while_it_is_read_is_reported_missing_and_the_backup_delivered(
    gcs_platform: Platform, gcs_clinic: Clinic, gcs_fault_proxy: FaultProxy
):
    # The object's metadata still reads, its bytes are gone (deleted or replaced by a newer
    # generation between the two requests): GCS answers 404 to the media read.
    victim = next(info.key for info in gcs_platform.files.list() if info.key.endswith(".pdf"))
    gcs_fault_proxy.refuse_reads(quote(f"platform/{victim}", safe=""), 404)

    run = _back_up(gcs_platform, gcs_clinic, gcs_fault_proxy, FaultPlan.off())

    assert run.outcome.success and run.request.status == "delivered"
    assert verify_zip(io.BytesIO(run.zip_bytes)).ok
    with gcs_platform.engine.connect() as conn:
        cfdi_id = conn.execute(
            select(tables.cfdi_documents.c.id).where(
                tables.cfdi_documents.c.pdf_storage_key == victim
            )
        ).scalar_one()
    (gone,) = [row for row in run.missing_rows() if row[5] == cfdi_id]  # "ID del registro"
    assert gone[1] == "PDF de CFDI" and gone[6] == REASON_NOT_FOUND
    assert gone[2].startswith("PDF del comprobante emitido ")
    assert gone[0] not in run.sums()
    # The same invoice's XML, read from the same bucket, made it.
    assert gone[0].replace("/pdf/", "/xml/").removesuffix(".pdf") + ".xml" in run.sums()


@pytest.mark.parametrize(
    ("status", "raised"),
    [(404, ObjectNotFound), (403, StoreRefused)],
    ids=["gone-is-not-found", "forbidden-stays-loud"],
)
def test_a_gcs_read_fails_as_the_store_interface_says(
    gcs_fault_proxy: FaultProxy, status: int, raised: type[Exception]
):
    # 404 after the metadata read: the zipper's missing-file logic applies. 403 is a
    # misconfiguration: it must fail the backup rather than leave every file out of it.
    store = EmulatorGcsResource(url=f"{new_bucket_url('bp-fault')}/platform").get_store()
    store.put_bytes("adjuntos/radiografía 1.png", b"\x89PNG" + bytes(1000))
    gcs_fault_proxy.refuse_reads(quote("platform/adjuntos/radiografía 1.png", safe=""), status)

    with store.open_read("adjuntos/radiografía 1.png") as src, pytest.raises(raised) as caught:
        src.read()
    assert "radiograf" not in str(caught.value)  # the key (a user's file name) is not repeated
    assert issubclass(raised, OSError) == (status == 404)


# --- the mail provider refusing ----------------------------------------------------------------


def _seed_clinic(request: pytest.FixtureRequest, backends: Backends) -> tuple[Platform, Clinic]:
    """A seeded clinic on `backends`, its files and archives in folders."""
    platform = open_platform(request, backends)
    (clinic,) = platform.seed(patients=PATIENTS, seed=5)
    return platform, clinic


@dataclass
class Ran:
    outcome: RunOutcome
    retried_steps: list[str]  # one item per retry, by step key


def _run(platform: Platform, clinic: Clinic) -> Ran:
    request_id = platform.file_request(clinic)
    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance, platform.resources(), request_id, clinic.subscription_id
        )
        retries = instance.all_logs(outcome.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    return Ran(outcome, [event.step_key for event in retries])


def _attempts(endpoint: SendGridEndpoint, key: str) -> list[int | None]:
    """The statuses answered to each POST of the email with this key, in order."""
    return [
        r.status for r in endpoint.recorded if r.payload.get("custom_args", {}).get("key") == key
    ]


def test_mail_throttled_then_accepted_sends_exactly_one_email(
    request: pytest.FixtureRequest, sendgrid_endpoint: SendGridEndpoint
):
    platform, clinic = _seed_clinic(request, WITH_SENDGRID)
    sendgrid_endpoint.script([429])

    ran = _run(platform, clinic)

    request_id = ran.outcome.request_id
    assert ran.outcome.success and ran.outcome.request_status == "delivered"
    assert ran.retried_steps == ["deliver_backup"]
    assert _attempts(sendgrid_endpoint, f"backup-{request_id}-delivered") == [429, 202]
    (sent,) = read_sendgrid(sendgrid_endpoint)
    with platform.engine.connect() as conn:
        request = db.get_request(conn, request_id)
    assert sent.message_id == request.email_message_id
    assert request.archive_sha256 in sent.text


def test_mail_refused_for_good_fails_the_request_once_and_tells_support(
    request: pytest.FixtureRequest, sendgrid_endpoint: SendGridEndpoint
):
    platform, clinic = _seed_clinic(request, WITH_SENDGRID)
    sendgrid_endpoint.script([400])  # e.g. the requester's address is not deliverable

    ran = _run(platform, clinic)

    request_id = ran.outcome.request_id
    assert not ran.outcome.success and ran.outcome.request_status == "failed"
    assert ran.retried_steps == []
    assert _attempts(sendgrid_endpoint, f"backup-{request_id}-delivered") == [400]
    alerts = [
        m for m in read_sendgrid(sendgrid_endpoint) if m.key == f"backup-{request_id}-failure-alert"
    ]
    assert [m.to for m in alerts] == [platform.resources()["mailer"].support_email]


# --- the platform database dropping a read -----------------------------------------------------


@pytest.mark.postgres
def test_a_connection_dropped_mid_read_is_retried_and_the_workbook_has_every_row_once(
    request: pytest.FixtureRequest,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):
    platform, clinic = _seed_clinic(request, ON_POSTGRES)
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    dataset = consultations.DATASET
    real_extract = dataset.extract
    # The export runs in a worker process forked for each attempt: what it did is told through
    # a file, which the next attempt's worker sees.
    dropped = tmp_path / "rows_before_drop"

    def extract_then_drop(ctx: ExtractContext) -> Extraction:
        # Small chunks, so the read is many round trips to the server-side cursor; after the
        # first chunk of the first attempt, PostgreSQL terminates the op's connection.
        ctx.chunksize = 3
        extraction = real_extract(ctx)
        if dropped.exists():
            return extraction
        pid = ctx.connection.connection.dbapi_connection.info.backend_pid

        source = extraction.chunks

        def chunks() -> Iterator:
            for chunk in source:
                yield chunk
                if not dropped.exists():
                    dropped.write_text(str(len(chunk)))
                    _terminate_backend(admin, pid)

        extraction.chunks = chunks()
        return extraction

    monkeypatch.setattr(dataset, "extract", extract_then_drop)
    try:
        ran = _run(platform, clinic)
    finally:
        admin.dispose()

    rows_before_drop = int(dropped.read_text())
    assert rows_before_drop == 3
    assert ran.outcome.success and ran.outcome.request_status == "delivered"
    # The workbooks are rendered inside assemble_backup: that step is retried as a whole.
    assert ran.retried_steps == ["assemble_backup"]
    with platform.engine.connect() as conn:
        request = db.get_request(conn, ran.outcome.request_id)
        listed = dataset.query(clinic.subscription_id).subquery()
        expected = sorted(conn.execute(select(listed.c.consultation_id)).scalars())
    assert len(expected) > 10 * rows_before_drop
    with zipfile.ZipFile(io.BytesIO(platform.archives.get_bytes(request.archive_key))) as zf:
        book = load_workbook(io.BytesIO(zf.read(dataset.archive_path)), read_only=True)
    sheet = book.worksheets[0]
    header = next(sheet.iter_rows(max_row=1, values_only=True))
    column = header.index("ID consulta")
    written = [row[column] for row in sheet.iter_rows(min_row=2, values_only=True) if any(row)]
    assert sorted(written) == expected  # every row, and each once


def _terminate_backend(admin: Engine, pid: int) -> None:
    """Terminate a backend from another connection and wait until it is gone."""
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        for _ in range(500):
            gone = not conn.execute(
                text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).first()
            if gone:
                return
            time.sleep(0.01)
    raise AssertionError("the backend did not terminate")
