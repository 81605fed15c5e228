"""The platform's database: the engine resource and every read and write of backup_requests."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from sqlalchemy import Connection, Engine, and_, create_engine, event, func, select, update
from sqlalchemy.pool import NullPool

from backup_pipeline import tables as t
from backup_pipeline.migrations import upgrade as upgrade_our_tables

OPEN_STATUSES = ("pending", "running")


def utcnow() -> datetime:
    """Naive UTC, as every TIMESTAMP in the platform's database."""
    return datetime.now(UTC).replace(tzinfo=None)


@functools.lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL and process (ops, sensors and the CLI share it)."""
    if url.startswith("sqlite"):
        # NullPool: SQLite connections are cheap, and a pooled one must not cross a fork.
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the sensor read while a run writes; the platform's SQLite is dev-only.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


class PlatformDatabaseResource(dg.ConfigurableResource):
    """The platform's database (any SQLAlchemy URL)."""

    url: str

    def get_engine(self) -> Engine:
        # Dagster resolves an EnvVar field only for runs and sensors; the CLI and scripts use the
        # resource as built (resources.build_resources), where `url` is still the variable's name.
        url = self.url.get_value() if isinstance(self.url, dg.EnvVar) else self.url
        if url is None:
            raise ValueError("BACKUP_PLATFORM_DB_URL is not set in this process's environment")
        return engine_for(url)


def create_schema(engine: Engine) -> None:
    """Create the platform's tables (development and tests only), then ours by our migrations,
    as production gets them: the demo and the tests run the same revisions."""
    t.metadata.create_all(engine, tables=list(t.PLATFORM_TABLES))
    upgrade_our_tables(engine)


def next_subscription_id(engine: Engine) -> int:
    """The first id after every subscription's (seeding a development database)."""
    with engine.connect() as conn:
        current = conn.execute(select(func.max(t.subscriptions.c.id))).scalar()
    return (current or 0) + 1


@dataclass(frozen=True)
class BackupRequest:
    id: int
    subscription_id: int
    requested_by_user_id: int
    requested_at: datetime
    status: str
    status_detail: str | None
    started_at: datetime | None
    finished_at: datetime | None
    archive_key: str | None
    archive_size_bytes: int | None
    archive_sha256: str | None
    link_expires_at: datetime | None
    email_sent_at: datetime | None
    email_message_id: str | None
    run_id: str | None


@dataclass(frozen=True)
class Subscription:
    id: int
    name: str
    timezone: str
    status: str


@dataclass(frozen=True)
class Requester:
    id: int
    subscription_id: int
    email: str
    is_active: bool
    can_request_backup: bool


def get_request(conn: Connection, request_id: int) -> BackupRequest | None:
    row = (
        conn.execute(select(t.backup_requests).where(t.backup_requests.c.id == request_id))
        .mappings()
        .first()
    )
    return BackupRequest(**row) if row else None


def get_subscription(conn: Connection, subscription_id: int) -> Subscription | None:
    s = t.subscriptions.c
    row = (
        conn.execute(select(s.id, s.name, s.timezone, s.status).where(s.id == subscription_id))
        .mappings()
        .first()
    )
    return Subscription(**row) if row else None


def get_requester(conn: Connection, user_id: int) -> Requester | None:
    u = t.users.c
    row = (
        conn.execute(
            select(u.id, u.subscription_id, u.email, u.is_active, u.can_request_backup).where(
                u.id == user_id
            )
        )
        .mappings()
        .first()
    )
    return Requester(**row) if row else None


def _update_request(
    conn: Connection, request_id: int, only_if_status: tuple[str, ...] | None, **values: Any
) -> bool:
    r = t.backup_requests.c
    condition = r.id == request_id
    if only_if_status is not None:
        condition = and_(condition, r.status.in_(only_if_status))
    result = conn.execute(update(t.backup_requests).where(condition).values(**values))
    return result.rowcount == 1


def mark_running(conn: Connection, request_id: int, run_id: str) -> bool:
    """pending (or failed, when support re-runs it) -> running. False if it is in another state."""
    return _update_request(
        conn,
        request_id,
        ("pending", "running", "failed"),
        status="running",
        status_detail=None,
        started_at=utcnow(),
        finished_at=None,
        run_id=run_id,
    )


def record_email_sent(
    conn: Connection, request_id: int, *, sent_at: datetime, message_id: str
) -> None:
    _update_request(conn, request_id, None, email_sent_at=sent_at, email_message_id=message_id)


def record_archive(
    conn: Connection,
    request_id: int,
    *,
    archive_key: str,
    size: int,
    sha256: str,
    link_expires_at: datetime,
) -> None:
    _update_request(
        conn,
        request_id,
        None,
        archive_key=archive_key,
        archive_size_bytes=size,
        archive_sha256=sha256,
        link_expires_at=link_expires_at,
    )


def mark_delivered(conn: Connection, request_id: int, run_id: str) -> bool:
    return _update_request(
        conn,
        request_id,
        ("running", "pending", "failed"),
        status="delivered",
        status_detail=None,
        finished_at=utcnow(),
        run_id=run_id,
    )


def mark_failed(conn: Connection, request_id: int, *, reason: str, run_id: str | None) -> bool:
    """Only an open request can fail; True when this call made it failed (notify once)."""
    values: dict[str, Any] = {
        "status": "failed",
        "status_detail": reason,
        "finished_at": utcnow(),
    }
    if run_id is not None:
        values["run_id"] = run_id
    return _update_request(conn, request_id, OPEN_STATUSES, **values)


def mark_rejected(conn: Connection, request_id: int, *, detail: str) -> bool:
    return _update_request(
        conn,
        request_id,
        ("pending",),
        status="rejected",
        status_detail=detail,
        finished_at=utcnow(),
    )


def mark_expired(conn: Connection, request_id: int) -> bool:
    return _update_request(conn, request_id, ("delivered",), status="expired")


def forget_failed_archive(conn: Connection, request_id: int) -> bool:
    """A failed request's leftover archive was deleted: no archive and no link to show."""
    return _update_request(
        conn,
        request_id,
        ("failed",),
        archive_key=None,
        archive_size_bytes=None,
        archive_sha256=None,
        link_expires_at=None,
    )
