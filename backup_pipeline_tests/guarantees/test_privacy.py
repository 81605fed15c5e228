"""Nothing leaks: no patient data where engineers look, secrets only from the environment, and the
download link reaches only the requester and ends when configured.

The privacy runs scan everything a run leaves behind outside the clinic's own zip and email: the
Dagster event log (messages, metadata, errors), the run and its tags, every file of the Dagster
instance, the request's status_detail, support's emails, Python log records at DEBUG and the
process's stdout and stderr.
"""

from __future__ import annotations

import json
import logging
import re
import runpy
import secrets
import string
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

import dagster as dg
import pytest
from google.cloud import storage
from google.oauth2 import service_account
from pydantic import Field
from slugify import slugify
from sqlalchemy import select, update

from backup_pipeline.archive.plan import plan_files
from backup_pipeline.operations import execute_request
from backup_pipeline.platform import tables as t
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.storage import ObjectStoreResource, open_store
from backup_pipeline.rules.archive_entries import KIND_ATTACHMENT
from backup_pipeline.services import housekeeping
from backup_pipeline.services.failures import error_class_of
from backup_pipeline.settings import MAX_LINK_TTL, Settings
from backup_pipeline.storage.folder import FolderStore
from backup_pipeline.storage.gcs import GcsStore
from backup_pipeline_tests.support.gcs import EMULATOR_PROJECT
from backup_pipeline_tests.support.location import backup_request_sensor
from backup_pipeline_tests.support.platform import Clinic, Platform
from backup_pipeline_tests.support.sendgrid import SendGridEndpoint, read_outbox
from backup_pipeline_tests.support.signing import (
    new_private_key,
    private_key_pem,
    service_account_info,
)

REPO = Path(__file__).resolve().parents[2]
SIGNER = "backup-archives@clinic-platform.iam.gserviceaccount.com"
# Words of the synthetic "patient without data" that are the product's own vocabulary too.
GENERIC_WORDS = {"paciente", "datos"}


def fake_sendgrid_key() -> str:
    """A key shaped like SendGrid's ('SG.' + 22 + '.' + 43 characters), made up for this test."""
    alphabet = string.ascii_letters + string.digits + "-_"
    part = lambda n: "".join(secrets.choice(alphabet) for _ in range(n))  # noqa: E731
    return f"SG.{part(22)}.{part(43)}"


# --- the seeded platform --------------------------------------------------------------------------


@pytest.fixture
def clinic(platform: Platform) -> Clinic:
    (seeded,) = platform.seed(patients=10, seed=11)
    return seeded


def personal_data(platform: Platform, clinic: Clinic) -> dict[str, set[str]]:
    """What identifies the clinic's patients and the requester, by kind."""
    p = t.patients.c
    found: dict[str, set[str]] = {"name": set(), "email": set(), "curp": set(), "rfc": set()}
    with platform.engine.connect() as conn:
        rows = conn.execute(
            select(p.first_name, p.last_name, p.second_last_name, p.email, p.curp, p.rfc).where(
                p.subscription_id == clinic.subscription_id
            )
        ).all()
    for row in rows:
        for name in (row.first_name, row.last_name, row.second_last_name):
            if name:
                found["name"].add(name)
                found["name"].update(
                    word
                    for word in name.split()
                    if len(word) >= 4 and word.casefold() not in GENERIC_WORDS
                )
        found["name"].add(" ".join(filter(None, (row.first_name, row.last_name))))
        for kind in ("email", "curp", "rfc"):
            if getattr(row, kind):
                found[kind].add(getattr(row, kind))
    assert all(found.values()), "the seeded clinic should have every kind of personal data"
    found["requester email"] = {platform.email_of(clinic.owner_id)}
    # A clinic is often named after its doctor: its name, and the slug the download name uses.
    with platform.engine.connect() as conn:
        clinic_name = conn.execute(
            select(t.subscriptions.c.name).where(t.subscriptions.c.id == clinic.subscription_id)
        ).scalar_one()
    found["clinic name"] = {clinic_name, slugify(clinic_name)}
    return found


def leaks(texts: dict[str, str], secrets_by_kind: dict[str, set[str]]) -> list[str]:
    """'<kind> found in <source>' for each secret that appears as a whole word in a text."""
    found = []
    for kind, values in secrets_by_kind.items():
        words = sorted(values, key=len, reverse=True)
        pattern = re.compile(
            # A word: no letter or digit on either side ('_' is a boundary, as in file names).
            r"(?<![^\W_])(?:" + "|".join(re.escape(v) for v in words) + r")(?![^\W_])",
            re.IGNORECASE,
        )
        for source, text in texts.items():
            match = pattern.search(text)
            if match:
                start = max(match.start() - 60, 0)
                found.append(f"{kind} in {source}: ...{text[start : match.end() + 60]!r}")
    return found


def strings_in(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def as_text(value: object) -> str:
    """Every string inside a Dagster record (event, run), JSON escapes undone."""
    return "\n".join(strings_in(json.loads(dg.serialize_value(value))))


def instance_files(instance: dg.DagsterInstance) -> dict[str, str]:
    """Every file the instance wrote (event log databases, compute logs), as UTF-8 and as the
    JSON escapes its storage may keep non-ASCII text in."""
    texts = {}
    for path in Path(instance.root_directory).rglob("*"):
        if path.is_file():
            raw = path.read_bytes().decode("utf-8", errors="replace")
            unescaped = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), raw)
            texts[f"instance file {path.name}"] = unescaped
    return texts


def run_record(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    run = instance.get_run_by_id(run_id)
    return {
        "event log": "\n".join(as_text(entry) for entry in instance.all_logs(run_id)),
        "run and its tags": as_text(run),
        "run tags": json.dumps(dict(run.tags), ensure_ascii=False),
        **instance_files(instance),
    }


def request_row_text(request: object) -> str:
    """The request's row as the platform reads it, but its archive_key: the archive's own object
    key, named after the clinic, which is the platform's to store (it is the download's name)."""
    return repr(replace(request, archive_key=None))  # type: ignore[type-var]


def python_logs(records: Iterable[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in records)


# --- privacy: a full run, and a run that fails -----------------------------------------------------


def test_a_full_run_leaves_no_patient_data_or_api_key_where_engineers_look(
    platform: Platform,
    clinic: Clinic,
    sendgrid_endpoint: SendGridEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    api_key = fake_sendgrid_key()
    monkeypatch.setenv("SENDGRID_API_KEY", api_key)
    platform.env["BACKUP_MAIL_URL"] = sendgrid_endpoint.url
    caplog.set_level(logging.DEBUG)
    watched = personal_data(platform, clinic)
    request_id = platform.file_request(clinic)
    resources = platform.resources()

    with dg.instance_for_test() as instance:
        tick = backup_request_sensor(
            dg.build_sensor_context(instance=instance, resources=resources)
        )
        (run_request,) = tick.run_requests
        outcome = execute_request(instance, resources, request_id, clinic.subscription_id)
        texts = {
            **run_record(instance, outcome.run_id),
            "sensor's run request": as_text(run_request),
        }

    assert outcome.success and outcome.request_status == "delivered"
    (sent,) = sendgrid_endpoint.recorded
    assert sent.headers["Authorization"] == f"Bearer {api_key}"  # the key was in use
    request = platform.request(request_id)
    captured = capfd.readouterr()
    texts |= {
        "status_detail and request row": request_row_text(request),
        "python logs": python_logs(caplog.records),
        "stdout": captured.out,
        "stderr": captured.err,
    }
    assert "export_patients" in texts["event log"]  # the scan reads what the run logged
    assert leaks(texts, {**watched, "SendGrid API key": {api_key}}) == []


def test_a_failed_run_tells_support_why_without_patient_data(
    platform: Platform,
    clinic: Clinic,
    sendgrid_endpoint: SendGridEndpoint,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    platform.env["BACKUP_MAIL_URL"] = sendgrid_endpoint.url
    caplog.set_level(logging.DEBUG)
    watched = personal_data(platform, clinic)
    requester = platform.email_of(clinic.owner_id)
    request_id = platform.file_request(clinic)
    # The provider refuses the link's email for good; its error body quotes the address.
    sendgrid_endpoint.script([400])

    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance, platform.resources(), request_id, clinic.subscription_id
        )
        texts = run_record(instance, outcome.run_id)

    assert not outcome.success and outcome.request_status == "failed"
    request = platform.request(request_id)
    # The clinic reads what failed in its words; the step's name goes to support.
    assert request.status_detail.startswith("No se pudo generar el correo con el enlace")
    assert "deliver_backup" not in request.status_detail
    sent = [r.payload for r in sendgrid_endpoint.recorded if r.status == 202]
    to_support = [p for p in sent if p["personalizations"][0]["to"][0]["email"] != requester]
    to_requester = [p for p in sent if p["personalizations"][0]["to"][0]["email"] == requester]
    assert len(to_support) == 1 and len(to_requester) == 1
    assert str(request_id) in to_support[0]["subject"]
    captured = capfd.readouterr()
    texts |= {
        "status_detail": request.status_detail,
        "support alert": json.dumps(to_support[0], ensure_ascii=False),
        "python logs": python_logs(caplog.records),
        "stdout": captured.out,
        "stderr": captured.err,
    }
    assert "STEP_FAILURE" in texts["event log"]
    assert leaks(texts, watched) == []


# --- privacy: every path that warns -------------------------------------------------------------


class FirstReadFails(FolderStore):
    """The platform's files folder, where the first read of one object drops mid-way (as a reset
    connection does) and the next succeeds. The marker file says it failed once, in whichever
    process read it first."""

    def __init__(self, root: Path, key: str, marker: Path) -> None:
        super().__init__(root)
        self.key, self.marker = key, marker

    def _fail_once(self, key: str) -> None:
        if key == self.key and not self.marker.exists():
            self.marker.touch()
            raise ConnectionResetError("the connection dropped during the read (test)")

    def open_read(self, key: str) -> BinaryIO:
        self._fail_once(key)
        return super().open_read(key)

    def read_into(self, key: str, out: BinaryIO) -> int:
        self._fail_once(key)
        return super().read_into(key, out)


class FirstReadFailsFiles(ObjectStoreResource):
    key: str = Field(description="the one object whose first read fails")
    marker: str = Field(description="a file made when it failed")

    def _open(self) -> FirstReadFails:
        return FirstReadFails(Path(unquote(urlsplit(self.url).path)), self.key, Path(self.marker))


def files_of(platform: Platform, clinic: Clinic) -> dict[str, set[str]]:
    """Every file's name as uploaded and path in the archive (it holds the patient's name)."""
    with platform.engine.connect() as conn:
        plan = list(plan_files(conn, clinic.subscription_id))
    return {
        "file name": {p.original_name for p in plan if p.original_name},
        "archive path": {p.archive_path for p in plan},
    }


WARNING_PATHS = ["checksum_mismatch", "read_retry", "missing_file", "revoked_requester"]


@pytest.mark.parametrize("warning", WARNING_PATHS)
def test_no_warning_path_leaves_patient_data_where_engineers_look(
    platform: Platform,
    clinic: Clinic,
    warning: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    watched = {**personal_data(platform, clinic), **files_of(platform, clinic)}
    with platform.engine.connect() as conn:
        plan = list(plan_files(conn, clinic.subscription_id))
    # The warned-about file: a patient's attachment, whose path names the patient.
    concerned = next(
        p for p in plan if p.kind == KIND_ATTACHMENT and platform.files.exists(p.source_key)
    )
    assert concerned.original_name and concerned.archive_path in watched["archive path"]
    marker = tmp_path / "read-failed-once"
    if warning == "checksum_mismatch":
        with platform.engine.begin() as conn:
            conn.execute(
                update(t.attachments)
                .where(t.attachments.c.id == concerned.record_id)
                .values(sha256="0" * 64)
            )
    elif warning == "read_retry":
        platform.resource_overrides["files"] = FirstReadFailsFiles(
            url=platform.settings.files_url, key=concerned.source_key, marker=str(marker)
        )
    elif warning == "missing_file":
        assert platform.files.delete(concerned.source_key)
    else:
        with platform.engine.begin() as conn:
            conn.execute(
                update(t.users)
                .where(t.users.c.id == clinic.owner_id)
                .values(can_request_backup=False)
            )
    gone = sum(1 for p in plan if not platform.files.exists(p.source_key))
    request_id = platform.file_request(clinic)

    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance, platform.resources(), request_id, clinic.subscription_id
        )
        texts = run_record(instance, outcome.run_id)
        archive = (
            {
                name: value.value
                for record in instance.all_logs(
                    outcome.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT
                )
                if record.dagster_event.event_specific_data.step_output_handle.output_name
                == "archive"
                for name, value in record.dagster_event.event_specific_data.metadata.items()
            }
            if outcome.success
            else {}
        )

    # The warning path was taken.
    if warning == "checksum_mismatch":
        assert archive["checksum_mismatches"] == 1
    elif warning == "read_retry":
        assert marker.exists() and archive["missing_files"] == gone  # read again, copied
    elif warning == "missing_file":
        assert archive["missing_files"] == gone
    if warning == "revoked_requester":
        assert outcome.request_status == "failed"
    else:
        assert outcome.request_status == "delivered"
    request = platform.request(request_id)
    requester = platform.email_of(clinic.owner_id)
    captured = capfd.readouterr()
    texts |= {
        "status_detail and request row": request_row_text(request),
        "python logs": python_logs(caplog.records),
        "stdout": captured.out,
        "stderr": captured.err,
        **{
            f"email to support: {m.subject}": m.subject + m.text
            for m in platform.sent()
            if m.to != requester
        },
    }
    assert leaks(texts, watched) == []


class FailsAfterRetries(Exception):
    pass


@dg.op(retry_policy=dg.RetryPolicy(max_retries=1, delay=0))
def _always_fails() -> None:
    raise FailsAfterRetries("the failing op's text may quote data: never shown")


@dg.job
def _retried_job() -> None:
    _always_fails()


def test_the_failure_reason_names_the_error_class_under_the_retry_wrapper() -> None:
    result = _retried_job.execute_in_process(raise_on_error=False)
    (failure,) = result.get_step_failure_events()
    error = failure.event_specific_data.error
    assert error.cls_name == "RetryRequestedFromPolicy"  # what Dagster reports after retries
    assert error_class_of(error) == "FailsAfterRetries"
    assert error_class_of(None) is None


# --- secrets ---------------------------------------------------------------------------------------


def test_the_ui_shows_neither_the_api_key_nor_the_database_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from backup_pipeline_tests.support.dagster_internals import RepositorySnap

    api_key = fake_sendgrid_key()
    password = secrets.token_urlsafe(16)
    env = {
        "SENDGRID_API_KEY": api_key,
        "BACKUP_MAIL_URL": "sendgrid://",
        "BACKUP_PLATFORM_DB_URL": f"postgresql+psycopg://backups:{password}@db.internal/platform",
        "BACKUP_FILES_URL": (tmp_path / "files").as_uri(),
        "BACKUP_ARCHIVES_URL": (tmp_path / "archives").as_uri(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    # The code location as `dagster dev` loads it, in a namespace of its own.
    # `defs` is lazy (@dg.definitions): Dagster calls it when it loads the location.
    defs = runpy.run_module("backup_pipeline.definitions")["defs"]()
    # What the webserver is sent about the code location: jobs, sensors, resources and their config.
    snapshot = dg.serialize_value(RepositorySnap.from_def(defs.get_repository_def()))

    # The resources are there, without config: the settings choose them, not the UI.
    assert '"mailer"' in snapshot and '"platform_db"' in snapshot
    assert api_key not in snapshot
    assert password not in snapshot


SECRET_PATTERNS = {
    "SendGrid API key": re.compile(r"SG\.[\w-]{22}\.[\w-]{43}"),
    "PEM private key": re.compile(r"-{5}BEGIN (?:[A-Z]+ )*PRIVATE KEY-{5}\s+[A-Za-z0-9+/=]{40}"),
    "Google API key": re.compile(r"AIza[\w-]{35}"),
    "Google service-account key file": re.compile(r'"private_key_id"\s*:\s*"[0-9a-f]{40}"'),
}
SECRET_FILE_SUFFIXES = (".pem", ".p12", ".pfx", ".key", ".env")


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name]


def test_no_secret_is_committed_to_the_repository() -> None:
    files = tracked_files()
    assert REPO / "pyproject.toml" in files
    found = []
    for path in files:
        if path.name.endswith(SECRET_FILE_SUFFIXES) or path.name == ".env":
            found.append(f"{path.relative_to(REPO)}: a secret's file type")
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        found += [
            f"{path.relative_to(REPO)}: {kind}"
            for kind, pattern in SECRET_PATTERNS.items()
            if pattern.search(text)
        ]
    assert found == []


def test_the_secret_scan_recognises_what_it_looks_for() -> None:
    pem = private_key_pem(new_private_key(1024))
    assert SECRET_PATTERNS["PEM private key"].search(pem)
    assert SECRET_PATTERNS["SendGrid API key"].search(fake_sendgrid_key())
    assert not SECRET_PATTERNS["SendGrid API key"].search("SG.test-key-not-real")


# --- access: the link -------------------------------------------------------------------------------


def service_account_file(path: Path) -> Path:
    path.write_text(json.dumps(service_account_info(new_private_key(), SIGNER)))
    return path


class KeySignedArchives(ObjectStoreResource):
    """The archives bucket on the emulator, its links V4-signed with a service-account key as in
    production (the emulator's anonymous client cannot sign)."""

    credentials_file: str = Field(description="a service-account key file (made by the test)")

    def get_store(self) -> GcsStore:
        if self._store is None:
            store = open_store(self.url)
            credentials = service_account.Credentials.from_service_account_file(
                self.credentials_file, scopes=storage.Client.SCOPE
            )
            parts = urlsplit(self.url)
            signer = GcsStore(
                parts.netloc,
                parts.path,
                credentials=credentials,
                project=EMULATOR_PROJECT,
            )
            store.signed_url = signer.signed_url  # object calls stay on the emulator's client
            self._store = store
        return self._store

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.get_store()


def test_the_link_lives_the_configured_time_and_the_archive_goes_when_it_ends(
    platform: Platform, clinic: Clinic, gcs_bucket_url: str, tmp_path: Path
) -> None:
    platform.env |= {"BACKUP_ARCHIVES_URL": gcs_bucket_url, "BACKUP_LINK_TTL": "36"}
    resources = platform.resources()
    resources["archives"] = KeySignedArchives(
        url=gcs_bucket_url, credentials_file=str(service_account_file(tmp_path / "sa.json"))
    )
    request_id = platform.file_request(clinic)

    with dg.instance_for_test() as instance:
        outcome = execute_request(instance, resources, request_id, clinic.subscription_id)

    assert outcome.success
    request = platform.request(request_id)
    (email,) = read_outbox(platform.outbox)
    (link,) = set(re.findall(r"https?://[^\s<>\"]+X-Goog-Signature=[0-9a-f]+", email.text))
    query = {name: values[0] for name, values in parse_qs(urlsplit(link).query).items()}
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == str(36 * 3600)
    signed_at = datetime.strptime(query["X-Goog-Date"], "%Y%m%dT%H%M%SZ")
    # The expiry recorded (and shown in the email) is the link's own, give or take the run's pace.
    assert abs(signed_at + timedelta(hours=36) - request.link_expires_at) < timedelta(minutes=1)

    store = open_store(gcs_bucket_url)
    assert store.exists(request.archive_key)
    just_before = request.link_expires_at - timedelta(seconds=1)
    assert housekeeping.expire_archives(platform.engine, store, now=just_before) == 0
    assert store.exists(request.archive_key)
    assert housekeeping.expire_archives(platform.engine, store, now=request.link_expires_at) == 1
    assert not store.exists(request.archive_key)
    assert platform.request(request_id).status == "expired"


@pytest.mark.parametrize("hours", ["169", "200", "0", "-1"])
def test_a_link_lifetime_over_seven_days_or_not_positive_is_refused(hours: str) -> None:
    with pytest.raises(ValueError, match="whole hours from 1 to 168"):
        Settings.from_env({"BACKUP_LINK_TTL": hours})


def test_seven_days_is_the_longest_link_whatever_the_policy_says() -> None:
    assert Settings.from_env({"BACKUP_LINK_TTL": "168"}).link_ttl == MAX_LINK_TTL
    assert BackupPolicyResource(link_ttl_hours=1000).link_ttl == MAX_LINK_TTL == timedelta(days=7)


def test_only_the_requesters_address_at_sending_time_gets_the_link(
    platform: Platform, clinic: Clinic, sendgrid_endpoint: SendGridEndpoint
) -> None:
    platform.env["BACKUP_MAIL_URL"] = sendgrid_endpoint.url
    old_address = platform.email_of(clinic.owner_id)
    request_id = platform.file_request(clinic)
    new_address = "nueva.direccion@consultorio.example"
    with platform.engine.begin() as conn:
        conn.execute(
            update(t.users).where(t.users.c.id == clinic.owner_id).values(email=new_address)
        )

    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance, platform.resources(), request_id, clinic.subscription_id
        )

    assert outcome.success
    (sent,) = sendgrid_endpoint.recorded
    recipients = [
        address["email"]
        for personalization in sent.payload["personalizations"]
        for field in ("to", "cc", "bcc")
        for address in personalization.get(field, [])
    ]
    assert recipients == [new_address]
    assert old_address not in json.dumps(sent.payload)
    assert sent.payload["reply_to"]["email"] == platform.settings.support_email
