"""One platform and its clinics for every test: a database, two stores and a mail backend, built alike.

`Platform` is what a test files requests into and reads back from; `Backends` says which real
component stands behind each part (SQLite or PostgreSQL, a folder or the GCS emulator, an outbox
or the loopback SendGrid). The `platform` fixture is LOCAL unless the test (or its module)
parametrizes the `backends` fixture, e.g. with EVERY_DATABASE or a list of Backends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dagster as dg
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from sqlalchemy import Engine, create_engine, delete, func, insert, select

from backup_pipeline import platform as db
from backup_pipeline.datasets import DATASETS
from backup_pipeline.operations import RunOutcome, execute_request
from backup_pipeline.platform import create_schema
from backup_pipeline.platform import tables as t
from backup_pipeline.resources import build_resources
from backup_pipeline.rules.request_state import BackupRequest
from backup_pipeline.settings import Settings
from backup_pipeline.storage import ObjectStore
from backup_pipeline.storage import gcs as gcs_store
from backup_pipeline.synthetic import file_backup_request, seed_platform
from backup_pipeline_tests.support.acceptance import (
    Archive,
    signing_credentials,
)
from backup_pipeline_tests.support.gcs import EMULATOR_PROJECT
from backup_pipeline_tests.support.sendgrid import (
    SendGridEndpoint,
    SentEmail,
    read_outbox,
    read_sendgrid,
)

# Every workbook of an archive, in the order of the archive and the email.
WORKBOOKS: tuple[str, ...] = tuple(dataset.archive_path for dataset in DATASETS)

CLINIC_CREATED_AT = datetime(2020, 1, 1)
# Where archives go in their own bucket when the stores are on GCS.
GCS_ARCHIVES_PREFIX = "produccion"


# --- Which component stands behind each part ------------------------------------------------


@dataclass(frozen=True)
class Backends:
    database: str  # "sqlite" | "postgresql"
    stores: str  # "folder" | "gcs": the platform's files and our archives
    mail: str  # "outbox" | "sendgrid"

    def __str__(self) -> str:
        return f"{self.database}-{self.stores}-{self.mail}"


LOCAL = Backends("sqlite", "folder", "outbox")  # the embedded defaults' backends
ON_POSTGRES = Backends("postgresql", "folder", "outbox")
WITH_SENDGRID = Backends("sqlite", "folder", "sendgrid")
CLOUD = Backends("postgresql", "gcs", "sendgrid")  # production's backends

# For `backends` parametrization: each case once per database, ids as db_url's.
EVERY_DATABASE = [
    pytest.param(LOCAL, id="sqlite"),
    pytest.param(ON_POSTGRES, id="postgresql", marks=pytest.mark.postgres),
]


# --- A platform and its clinics ---------------------------------------------------------------


@dataclass(frozen=True)
class Clinic:
    """A subscription and the owner who asks for its backups."""

    subscription_id: int
    owner_id: int


@dataclass
class Backup:
    """A request run through the real job, and its backup_requests row after the run."""

    request_id: int
    outcome: RunOutcome
    request: BackupRequest

    @property
    def delivered(self) -> bool:
        return self.outcome.success and self.request.status == "delivered"


@dataclass
class Platform:
    """The platform's database, its files, our archives and a mail backend, as a deployment's
    environment names them (`env`), with the helpers tests file requests and read results with."""

    root: Path  # the test's own folder: folders, outbox and SQLite file live under it
    env: dict[str, str]  # BACKUP_* as a deployment sets them (a child process can take it whole)
    engine: Engine
    sendgrid: SendGridEndpoint | None = None
    # Resources that replace build_resources' own (e.g. a store with test credentials).
    resource_overrides: dict[str, dg.ConfigurableResource] = field(default_factory=dict)

    # --- configuration and resources

    @property
    def url(self) -> str:
        return self.env["BACKUP_PLATFORM_DB_URL"]

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def resources(self, settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
        """Every resource of the code location, as build_resources makes them for `settings`
        (the platform's own by default), with `resource_overrides` in place of its own."""
        return {**build_resources(settings or self.settings), **self.resource_overrides}

    @cached_property
    def files(self) -> ObjectStore:
        return self.resources()["files"].get_store()

    @cached_property
    def archives(self) -> ObjectStore:
        return self.resources()["archives"].get_store()

    @cached_property
    def instance(self) -> dg.DagsterInstance:
        """An in-memory Dagster instance: the same job and executor, no event log fsyncs."""
        return dg.DagsterInstance.ephemeral()

    def close(self) -> None:
        self.engine.dispose()
        if "instance" in self.__dict__:
            self.instance.dispose()

    # --- mail

    @property
    def outbox(self) -> Path | None:
        """The outbox folder when mail goes to one (file://), else None."""
        parts = urlsplit(self.settings.mail_url)
        return Path(unquote(parts.path)) if parts.scheme == "file" else None

    def sent(self) -> list[SentEmail]:
        """What the mail backend has accepted, oldest first."""
        if self.sendgrid is not None and self.settings.mail_url == self.sendgrid.url:
            return read_sendgrid(self.sendgrid)
        outbox = self.outbox
        return read_outbox(outbox) if outbox is not None else []

    # --- clinics

    def add_clinic(
        self,
        subscription_id: int = 1,
        *,
        owner_id: int | None = None,
        name: str | None = None,
        timezone: str = "America/Mexico_City",
        status: str = "active",
        owner_email: str | None = None,
        owner_name: str = "Dueña del consultorio",
        owner_active: bool = True,
        owner_authorised: bool = True,
        created_at: datetime = CLINIC_CREATED_AT,
    ) -> Clinic:
        """A subscription and its owner: a clinic that has not entered anything yet."""
        owner_id = subscription_id * 100 + 1 if owner_id is None else owner_id
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.subscriptions).values(
                    id=subscription_id,
                    name=name or f"Consultorio {subscription_id}",
                    timezone=timezone,
                    status=status,
                    created_at=created_at,
                )
            )
        self.add_user(
            owner_id,
            subscription_id,
            email=owner_email,
            full_name=owner_name,
            active=owner_active,
            authorised=owner_authorised,
            created_at=created_at,
        )
        return Clinic(subscription_id, owner_id)

    def add_user(
        self,
        user_id: int,
        subscription_id: int,
        *,
        email: str | None = None,
        full_name: str = "Dueña del consultorio",
        role: str = "owner",
        active: bool = True,
        authorised: bool = True,
        created_at: datetime = CLINIC_CREATED_AT,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.users).values(
                    id=user_id,
                    subscription_id=subscription_id,
                    email=email or f"usuario{user_id}@consultorio.example",
                    full_name=full_name,
                    role=role,
                    is_active=active,
                    can_request_backup=authorised,
                    created_at=created_at,
                )
            )

    def seed(
        self,
        *,
        profile: str = "small",
        patients: int | None = None,
        subscriptions: int = 1,
        seed: int = 0,
    ) -> list[Clinic]:
        """Synthetic clinics with patients, records and files (backup_pipeline.synthetic)."""
        summary = seed_platform(
            self.engine,
            self.files,
            profile=profile,
            patients=patients,
            subscriptions=subscriptions,
            seed=seed,
        )
        return [Clinic(sid, summary.user_ids[sid][0]) for sid in summary.subscription_ids]

    def email_of(self, user_id: int) -> str:
        with self.engine.connect() as conn:
            return conn.execute(select(t.users.c.email).where(t.users.c.id == user_id)).scalar_one()

    # --- requests

    def file_request(
        self, clinic: Clinic, *, by: int | None = None, requested_at: datetime | None = None
    ) -> int:
        """A pending request, as the platform files it when `by` (the owner) clicks; its id."""
        return file_backup_request(
            self.engine,
            subscription_id=clinic.subscription_id,
            user_id=clinic.owner_id if by is None else by,
            requested_at=requested_at,
        )

    def add_request(
        self,
        request_id: int,
        *,
        status: str,
        requested_at: datetime,
        subscription_id: int = 1,
        by: int | None = None,
        **columns: object,
    ) -> int:
        """A request in any state, with the id given (history, or a state a test starts from)."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.backup_requests).values(
                    id=request_id,
                    subscription_id=subscription_id,
                    requested_by_user_id=subscription_id * 100 + 1 if by is None else by,
                    requested_at=requested_at,
                    status=status,
                    **columns,
                )
            )
        return request_id

    def add_delivered_request(
        self,
        request_id: int,
        archives: ObjectStore | None = None,
        *,
        link_expires_at: datetime,
        **columns: object,
    ) -> str:
        """A delivered request whose (tiny) archive is in `archives`; the archive's key."""
        key = f"respaldos/1/{request_id}/respaldo_consultorio-1_2026-01-01.zip"
        (archives or self.archives).put_bytes(key, b"PK\x05\x06" + bytes(18))
        self.add_request(
            request_id,
            status="delivered",
            requested_at=link_expires_at - timedelta(days=4),
            archive_key=key,
            link_expires_at=link_expires_at,
            **columns,
        )
        return key

    def request(self, request_id: int) -> BackupRequest:
        """The backup_requests row, which must exist."""
        with self.engine.connect() as conn:
            row = db.get_request(conn, request_id)
        assert row is not None, f"no request {request_id}"
        return row

    def status(self, request_id: int) -> str | None:
        """The request's status, or None once the platform deleted the request."""
        r = t.backup_requests.c
        with self.engine.connect() as conn:
            return conn.execute(select(r.status).where(r.id == request_id)).scalar()

    def forget(self, request_id: int) -> None:
        """Delete the request, as the platform may."""
        with self.engine.begin() as conn:
            conn.execute(delete(t.backup_requests).where(t.backup_requests.c.id == request_id))

    def requests_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(t.backup_requests)).scalar()

    # --- our own tables

    def reviews_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(t.backup_request_reviews)).scalar()

    def alerts(self) -> list[tuple[int, str, datetime]]:
        """(request_id, kind, sent_at) of every alert sent to support."""
        a = t.backup_alerts.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.request_id, a.kind, a.sent_at).order_by(a.request_id))
            return [tuple(row) for row in rows]

    def quota_windows(self) -> dict[int, tuple]:
        """{subscription_id: (last_counted_backup_at, next_allowed_at, backups_last_360_days,
        updated_at)}."""
        q = t.backup_quota_windows.c
        query = select(
            q.subscription_id,
            q.last_counted_backup_at,
            q.next_allowed_at,
            q.backups_last_360_days,
            q.updated_at,
        )
        with self.engine.connect() as conn:
            return {row[0]: tuple(row[1:]) for row in conn.execute(query)}

    # --- backups through the real job

    def run(
        self,
        request_id: int,
        subscription_id: int,
        *,
        instance: dg.DagsterInstance | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> Backup:
        """Run the real backup job for the request, in process, as `backup-pipeline run` does."""
        outcome = execute_request(
            instance or self.instance,
            dict(resources or self.resources()),
            request_id,
            subscription_id,
        )
        return Backup(request_id, outcome, self.request(request_id))

    def back_up(self, clinic: Clinic, **run: Any) -> Backup:
        """File a request as the clinic's owner and run it (`run`: instance, resources)."""
        return self.run(self.file_request(clinic), clinic.subscription_id, **run)

    def archive(self, backup: Backup) -> Archive:
        """The delivered zip, read back from the archives store."""
        assert backup.delivered, f"request {backup.request_id} is {backup.request.status}"
        return Archive(self.archives.get_bytes(backup.request.archive_key))

    def archives_made(self) -> list[str]:
        """Every key under respaldos/ in the archives store."""
        return [info.key for info in self.archives.list("respaldos/")]

    def step_output_metadata(
        self, run_id: str, step_key: str, output: str = "result"
    ) -> dict[str, Any]:
        """The metadata an op attached to one of its outputs in this run (as the Dagster UI
        shows it); assemble_backup's are "archive" and one "export_<dataset>" per workbook."""
        for record in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
            event = record.dagster_event
            if (
                event is not None
                and event.step_key == step_key
                and event.event_specific_data.step_output_handle.output_name == output
            ):
                metadata = event.event_specific_data.metadata
                return {name: value.value for name, value in metadata.items()}
        raise AssertionError(f"step {step_key} produced no output in run {run_id}")

    def step_events(self, run_id: str, step_key: str, event_type: dg.DagsterEventType) -> int:
        return sum(
            1
            for record in self.instance.all_logs(run_id, of_type=event_type)
            if record.dagster_event is not None and record.dagster_event.step_key == step_key
        )


# --- Building one -------------------------------------------------------------------------------


def build_platform(
    root: Path,
    *,
    env: Mapping[str, str] | None = None,
    sendgrid: SendGridEndpoint | None = None,
    resources: Mapping[str, dg.ConfigurableResource] | None = None,
) -> Platform:
    """A platform under `root` with an empty schema: SQLite, folders and an outbox unless `env`
    names other URLs (BACKUP_PLATFORM_DB_URL, BACKUP_FILES_URL, ...) or other settings."""
    full_env = {
        "BACKUP_PLATFORM_DB_URL": f"sqlite:///{root / 'platform.db'}",
        "BACKUP_FILES_URL": (root / "files").as_uri(),
        "BACKUP_ARCHIVES_URL": (root / "archives").as_uri(),
        "BACKUP_MAIL_URL": (root / "outbox").as_uri(),
        **(env or {}),
    }
    engine = create_engine(full_env["BACKUP_PLATFORM_DB_URL"])
    create_schema(engine)
    return Platform(root, full_env, engine, sendgrid, dict(resources or {}))


def new_bucket_url(name: str = "bp-test") -> str:
    """A fresh, empty bucket in the GCS emulator, as gs://<bucket>."""
    client = storage.Client(project=EMULATOR_PROJECT, credentials=AnonymousCredentials())
    return f"gs://{client.create_bucket(f'{name}-{uuid.uuid4().hex[:12]}').name}"


def open_platform(
    request: pytest.FixtureRequest,
    backends: Backends = LOCAL,
    *,
    root: Path | None = None,
    env: Mapping[str, str] | None = None,
    resources: Mapping[str, dg.ConfigurableResource] | None = None,
) -> Platform:
    """A platform on `backends`, starting the components it needs through their fixtures
    (postgres_url, gcs_bucket_url, sendgrid_endpoint); closed when the test ends."""
    root = root or request.getfixturevalue("tmp_path")
    urls: dict[str, str] = {}
    if backends.database == "postgresql":
        urls["BACKUP_PLATFORM_DB_URL"] = request.getfixturevalue("postgres_url")
    if backends.stores == "gcs":
        # The emulator's anonymous credentials cannot sign links; production's service account can.
        credentials = request.getfixturevalue("gcs_signing_credentials")
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(gcs_store, "default_credentials", lambda: credentials)
        urls["BACKUP_FILES_URL"] = request.getfixturevalue("gcs_bucket_url")  # gs://b/some/prefix
        urls["BACKUP_ARCHIVES_URL"] = f"{new_bucket_url('bp-archives')}/{GCS_ARCHIVES_PREFIX}"
    sendgrid = None
    if backends.mail == "sendgrid":
        sendgrid = request.getfixturevalue("sendgrid_endpoint")
        urls["BACKUP_MAIL_URL"] = sendgrid.url
    platform = build_platform(
        root, env={**urls, **(env or {})}, sendgrid=sendgrid, resources=resources
    )
    request.addfinalizer(platform.close)  # before postgres_url drops the database
    return platform


@pytest.fixture(scope="session")
def gcs_signing_credentials():
    """A made-up service account whose key signs V4 links offline, as production's does."""
    return signing_credentials()


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> Backends:
    """LOCAL, unless a test or module parametrizes (or overrides) this fixture."""
    return getattr(request, "param", LOCAL)


@pytest.fixture
def platform(request: pytest.FixtureRequest, backends: Backends) -> Iterator[Platform]:
    """An empty platform (schema only) on `backends`."""
    yield open_platform(request, backends)
