"""The one gateway to the platform's database: its engine, and every read and write of
backup_requests and of our own backup_* tables (reviews, alerts, quota windows).

The rules that decide what to write (checks, quota, intake, housekeeping) take and return plain
values; only this module knows the SQL. Dataset exports keep their own queries (datasets/).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from backup_pipeline import tables as t
from backup_pipeline.checks import RequestUnderReview
from backup_pipeline.migrations import upgrade as upgrade_our_tables
from backup_pipeline.quota import PastRequest, QuotaWindow, quota_window
from backup_pipeline.request_state import (
    HOUSEKEEPING,
    OPEN_STATUSES,
    RUNNABLE_STATUSES,
    SENSOR,
    WAITING_STATUSES,
    Actor,
    BackupRequest,
    Requester,
    RequestEvent,
    RequestStatus,
    Subscription,
)

IN_CHUNK = 500  # ids per IN (...) list: well under every driver's parameter limit
# pg_advisory_xact_lock's first key for quota windows ('bak'): apart from other lock users.
QUOTA_LOCK_NAMESPACE = 0x62616B
RERUN_REASON = "support_rerun"  # backup_request_reviews.reason_code of a re-run by support


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


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start : start + IN_CHUNK]


def _select_in(conn: Connection, columns: Sequence, key, ids: Sequence[int]) -> list:
    rows: list = []
    for chunk in _chunks(sorted(set(ids))):
        rows.extend(conn.execute(select(*columns).where(key.in_(chunk))).all())
    return rows


# --- One request ----------------------------------------------------------------------------


def get_request(conn: Connection, request_id: int) -> BackupRequest | None:
    row = (
        conn.execute(select(t.backup_requests).where(t.backup_requests.c.id == request_id))
        .mappings()
        .first()
    )
    return BackupRequest(**row) if row else None


def get_subscription(conn: Connection, subscription_id: int) -> Subscription | None:
    found = subscriptions_by_id(conn, [subscription_id])
    return found.get(subscription_id)


def get_requester(conn: Connection, user_id: int) -> Requester | None:
    return requesters_by_id(conn, [user_id]).get(user_id)


def subscriptions_by_id(conn: Connection, ids: Sequence[int]) -> dict[int, Subscription]:
    s = t.subscriptions.c
    rows = _select_in(conn, (s.id, s.name, s.timezone, s.status), s.id, ids)
    return {row.id: Subscription(row.id, row.name, row.timezone, row.status) for row in rows}


def requesters_by_id(conn: Connection, ids: Sequence[int]) -> dict[int, Requester]:
    u = t.users.c
    rows = _select_in(
        conn, (u.id, u.subscription_id, u.is_active, u.can_request_backup, u.email), u.id, ids
    )
    return {
        row.id: Requester(
            row.id,
            row.subscription_id,
            bool(row.is_active),
            bool(row.can_request_backup),
            row.email,
        )
        for row in rows
    }


def _update_request(
    conn: Connection,
    request_id: int,
    only_if_status: frozenset[RequestStatus] | None,
    **values: Any,
) -> bool:
    r = t.backup_requests.c
    condition = r.id == request_id
    if only_if_status is not None:
        condition = and_(condition, r.status.in_(sorted(only_if_status)))
    result = conn.execute(update(t.backup_requests).where(condition).values(**values))
    return result.rowcount == 1


def _transition(
    conn: Connection,
    request_id: int,
    only_if_status: frozenset[RequestStatus],
    *,
    event: RequestEvent,
    actor: Actor,
    detail: str | None = None,
    **values: Any,
) -> bool:
    """Change a request's state, and in the same transaction append the change to the audit
    trail and re-derive its subscription's quota window. False (nothing written) when the request
    is not in one of `only_if_status`."""
    if not _update_request(conn, request_id, only_if_status, **values):
        return False
    subscription_id = _subscription_of(conn, request_id)
    append_event(conn, request_id, subscription_id, event, actor, detail)
    refresh_quota_windows_of(conn, [subscription_id])
    return True


def mark_running(conn: Connection, request_id: int, run_id: str) -> bool:
    """pending (or failed, when support re-runs it) -> running. False if it is in another state."""
    return _transition(
        conn,
        request_id,
        RUNNABLE_STATUSES,
        event=RequestEvent.RUNNING,
        actor=Actor.run(run_id),
        status=RequestStatus.RUNNING,
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


def extend_link(conn: Connection, request_id: int, *, link_expires_at: datetime) -> bool:
    """A delivered request's link lives until `link_expires_at`; False if it is not delivered."""
    return _update_request(
        conn,
        request_id,
        frozenset({RequestStatus.DELIVERED}),
        link_expires_at=link_expires_at,
    )


def still_due_for_expiry(conn: Connection, request_id: int, now: datetime) -> bool:
    """Right before its archive is deleted: the link has not been extended meanwhile."""
    r = t.backup_requests.c
    expires_at = conn.execute(
        select(r.link_expires_at).where(r.id == request_id)
    ).scalar_one_or_none()
    return expires_at is not None and expires_at <= now


def mark_delivered(conn: Connection, request_id: int, run_id: str) -> bool:
    return _transition(
        conn,
        request_id,
        RUNNABLE_STATUSES,
        event=RequestEvent.DELIVERED,
        actor=Actor.run(run_id),
        status=RequestStatus.DELIVERED,
        status_detail=None,
        finished_at=utcnow(),
        run_id=run_id,
    )


def mark_failed(
    conn: Connection,
    request_id: int,
    *,
    reason: str,
    run_id: str | None,
    event: RequestEvent = RequestEvent.FAILED,
    actor: Actor | None = None,
    detail: str | None = None,
) -> bool:
    """Only an open request can fail; True when this call made it failed (notify once).
    `reason` is what the clinic may read; `detail` (no patient data) is for the audit trail."""
    values: dict[str, Any] = {
        "status": RequestStatus.FAILED,
        "status_detail": reason,
        "finished_at": utcnow(),
    }
    if run_id is not None:
        values["run_id"] = run_id
    return _transition(
        conn,
        request_id,
        OPEN_STATUSES,
        event=event,
        actor=actor or (Actor.run(run_id) if run_id else HOUSEKEEPING),
        detail=detail,
        **values,
    )


def mark_expired(conn: Connection, request_id: int, actor: Actor = HOUSEKEEPING) -> bool:
    return _transition(
        conn,
        request_id,
        frozenset({RequestStatus.DELIVERED}),
        event=RequestEvent.EXPIRED,
        actor=actor,
        status=RequestStatus.EXPIRED,
    )


def refuse_pending(conn: Connection, request_id: int, *, status_detail: str, actor: Actor) -> bool:
    """pending -> rejected by support, with the reason the clinic reads."""
    refused = _transition(
        conn,
        request_id,
        frozenset({RequestStatus.PENDING}),
        event=RequestEvent.REJECTED,
        actor=actor,
        status=RequestStatus.REJECTED,
        status_detail=status_detail,
        finished_at=utcnow(),
    )
    if refused:
        # Remembered as reviewed, so the request sensor does not look at it again.
        conn.execute(delete(t.backup_request_reviews).where(_review_of(request_id)))
        conn.execute(
            insert(t.backup_request_reviews).values(
                request_id=request_id,
                decision="rejected",
                reason_code="refused_by_support",
                run_key=None,
                reviewed_at=utcnow(),
            )
        )
    return refused


def requeue_for_rerun(
    conn: Connection,
    request_id: int,
    *,
    run_key: str,
    actor: Actor,
    detail: str | None,
    launch_now: bool = True,
) -> bool:
    """failed -> pending, accepted for a new run under `run_key` (support's re-run): the request
    sensor launches it on its next tick, or (launch_now=False: the caller runs it) only if it is
    still pending after the usual wait."""
    requeued = _transition(
        conn,
        request_id,
        frozenset({RequestStatus.FAILED}),
        event=RequestEvent.RERUN,
        actor=actor,
        detail=detail,
        status=RequestStatus.PENDING,
        status_detail=None,
        finished_at=None,
        # The failed attempt's email (if one went) is not this run's: its archive is gone.
        email_sent_at=None,
        email_message_id=None,
    )
    if requeued:
        conn.execute(delete(t.backup_request_reviews).where(_review_of(request_id)))
        conn.execute(
            insert(t.backup_request_reviews).values(
                request_id=request_id,
                decision="accepted",
                reason_code=RERUN_REASON if launch_now else "support_rerun_by_hand",
                run_key=run_key,
                reviewed_at=utcnow(),
            )
        )
    return requeued


def relaunch_after_migration(conn: Connection, request_id: int, *, run_key: str) -> None:
    """A pending request whose run failed only because our tables were behind: the request
    sensor launches it again, under a new run key (Dagster skips one it has used), as soon as it
    can (right after `backup-pipeline migrate`)."""
    rv = t.backup_request_reviews.c
    conn.execute(
        update(t.backup_request_reviews)
        .where(rv.request_id == request_id, rv.decision == "accepted")
        .values(run_key=run_key, reason_code=RERUN_REASON, reviewed_at=utcnow())
    )


def record_link_resent(
    conn: Connection, request_id: int, *, actor: Actor, link_expires_at: datetime
) -> None:
    """A new link went out for a delivered request: no change of state, one more audit event."""
    append_event(
        conn,
        request_id,
        _subscription_of(conn, request_id),
        RequestEvent.LINK_RESENT,
        actor,
        f"link expires {link_expires_at:%Y-%m-%d %H:%M} UTC",
    )


# --- An archive's parts ---------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivePart:
    part: int  # 1-based
    parts: int
    archive_key: str
    size_bytes: int
    sha256: str


def record_parts(conn: Connection, request_id: int, parts: Sequence[ArchivePart]) -> None:
    """The zips of the request's archive (one, or a very large account's parts), replacing any
    earlier run's."""
    p = t.backup_archive_parts.c
    conn.execute(delete(t.backup_archive_parts).where(p.request_id == request_id))
    if parts:
        conn.execute(
            insert(t.backup_archive_parts),
            [{"request_id": request_id, **part.__dict__} for part in parts],
        )


def parts_of(conn: Connection, request_id: int) -> list[ArchivePart]:
    """The request's archive, part by part; for an archive recorded before parts existed (or by
    hand), its one key from backup_requests."""
    p = t.backup_archive_parts.c
    rows = conn.execute(
        select(p.part, p.parts, p.archive_key, p.size_bytes, p.sha256)
        .where(p.request_id == request_id)
        .order_by(p.part)
    ).all()
    if rows:
        return [ArchivePart(*row) for row in rows]
    request = get_request(conn, request_id)
    if request is None or not request.archive_key:
        return []
    return [
        ArchivePart(
            1, 1, request.archive_key, request.archive_size_bytes or 0, request.archive_sha256 or ""
        )
    ]


def forget_parts(conn: Connection, request_id: int) -> None:
    p = t.backup_archive_parts.c
    conn.execute(delete(t.backup_archive_parts).where(p.request_id == request_id))
    c = t.backup_archive_contents.c
    conn.execute(delete(t.backup_archive_contents).where(c.request_id == request_id))


def record_contents(conn: Connection, request_id: int, contents: Sequence[tuple[str, int]]) -> None:
    """What the request's archive contains, as its email lists it (Spanish label, count),
    replacing any earlier run's: a re-sent link's email lists the same."""
    c = t.backup_archive_contents.c
    conn.execute(delete(t.backup_archive_contents).where(c.request_id == request_id))
    if contents:
        conn.execute(
            insert(t.backup_archive_contents),
            [
                {"request_id": request_id, "position": position, "label": label, "count": count}
                for position, (label, count) in enumerate(contents, start=1)
            ],
        )


def contents_of(conn: Connection, request_id: int) -> list[tuple[str, int]]:
    """The archive's contents as its first email listed them; empty for an archive delivered
    before they were kept (migration 0004)."""
    c = t.backup_archive_contents.c
    rows = conn.execute(
        select(c.label, c.count).where(c.request_id == request_id).order_by(c.position)
    ).all()
    return [(label, count) for label, count in rows]


def _subscription_of(conn: Connection, request_id: int) -> int:
    r = t.backup_requests.c
    return conn.execute(select(r.subscription_id).where(r.id == request_id)).scalar_one()


def _review_of(request_id: int) -> Any:
    return t.backup_request_reviews.c.request_id == request_id


# --- The audit trail ------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedEvent:
    request_id: int
    occurred_at: datetime
    event: str
    actor: str
    run_id: str | None
    reason: str | None
    detail: str | None


def append_event(
    conn: Connection,
    request_id: int,
    subscription_id: int,
    event: RequestEvent,
    actor: Actor,
    detail: str | None = None,
    *,
    at: datetime | None = None,
) -> None:
    conn.execute(
        insert(t.backup_request_events),
        [_event_row(request_id, subscription_id, event, actor, detail, at)],
    )


def _event_row(
    request_id: int,
    subscription_id: int,
    event: RequestEvent,
    actor: Actor,
    detail: str | None,
    at: datetime | None,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "subscription_id": subscription_id,
        "occurred_at": at or utcnow(),
        "event": str(event),
        "actor": actor.kind,
        "run_id": actor.run_id,
        "reason": actor.reason,
        "detail": detail,
    }


def events_of(conn: Connection, request_id: int) -> list[RecordedEvent]:
    """A request's audit trail, oldest first."""
    e = t.backup_request_events.c
    rows = conn.execute(
        select(e.request_id, e.occurred_at, e.event, e.actor, e.run_id, e.reason, e.detail)
        .where(e.request_id == request_id)
        .order_by(e.id)
    ).all()
    return [RecordedEvent(*row) for row in rows]


def rerun_count(conn: Connection, request_id: int) -> int:
    e = t.backup_request_events.c
    return conn.execute(
        select(func.count())
        .select_from(t.backup_request_events)
        .where(e.request_id == request_id, e.event == RequestEvent.RERUN)
    ).scalar_one()


# --- Quota windows, kept current --------------------------------------------------------------


def refresh_quota_windows_of(
    conn: Connection, subscription_ids: Sequence[int], now: datetime | None = None
) -> None:
    """Re-derive the quota windows of these subscriptions from their requests, in the caller's
    transaction: the platform's button reads them right after any change that counts."""
    ids = sorted(set(subscription_ids))
    if not ids:
        return
    now = now or utcnow()
    if conn.dialect.name == "postgresql":
        # Two transactions changing one subscription's requests at once (a delivery and the
        # sensor's review) wait here for each other, so the second reads what the first
        # committed and neither writes a stale window. In id order: no deadlock.
        # One statement for the batch: the sensor reviews hundreds of subscriptions a tick.
        conn.execute(
            text(
                "SELECT count(pg_advisory_xact_lock(:namespace, k)) FROM "
                "(SELECT DISTINCT k FROM unnest(CAST(:keys AS integer[])) AS k ORDER BY k) AS ks"
            ),
            {"namespace": QUOTA_LOCK_NAMESPACE, "keys": [sid % 2**31 for sid in ids]},
        )
    history = request_history(conn, ids)
    rows = [_window_row(sid, quota_window(history[sid], now), now) for sid in ids]
    insert_rows = (postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert)(
        t.backup_quota_windows
    )
    conn.execute(
        insert_rows.on_conflict_do_update(
            index_elements=[t.backup_quota_windows.c.subscription_id],
            set_={
                name: insert_rows.excluded[name]
                for name in (
                    "last_counted_backup_at",
                    "next_allowed_at",
                    "backups_last_360_days",
                    "updated_at",
                )
            },
        ),
        rows,
    )


def _window_row(subscription_id: int, window: QuotaWindow, now: datetime) -> dict[str, Any]:
    return {
        "subscription_id": subscription_id,
        "last_counted_backup_at": window.last_counted_backup_at,
        "next_allowed_at": window.next_allowed_at,
        "backups_last_360_days": window.backups_last_360_days,
        "updated_at": now,
    }


def forget_failed_archive(conn: Connection, request_id: int) -> bool:
    """A failed request's leftover archive was deleted: no archive and no link to show."""
    return _update_request(
        conn,
        request_id,
        frozenset({RequestStatus.FAILED}),
        archive_key=None,
        archive_size_bytes=None,
        archive_sha256=None,
        link_expires_at=None,
    )


def statuses_of(conn: Connection, request_ids: Sequence[int]) -> dict[int, str]:
    r = t.backup_requests.c
    return {row.id: row.status for row in _select_in(conn, (r.id, r.status), r.id, request_ids)}


def status_and_time_of(
    conn: Connection, request_ids: Sequence[int]
) -> dict[int, tuple[str, datetime]]:
    """(status, requested_at) of each request id that names a row."""
    r = t.backup_requests.c
    rows = _select_in(conn, (r.id, r.status, r.requested_at), r.id, request_ids)
    return {row.id: (row.status, row.requested_at) for row in rows}


# --- The request sensor's review --------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionRequest:
    """Another request of a subscription under review, as the checks weigh it."""

    id: int
    subscription_id: int
    requested_at: datetime
    status: str


def unreviewed_pending(conn: Connection, limit: int) -> list[RequestUnderReview]:
    """Pending requests no tick has reviewed yet, oldest first (one more than `limit`, so the
    caller knows whether more wait)."""
    r, rv = t.backup_requests.c, t.backup_request_reviews.c
    rows = conn.execute(
        select(r.id, r.subscription_id, r.requested_by_user_id, r.requested_at)
        .outerjoin(t.backup_request_reviews, rv.request_id == r.id)
        .where(r.status == RequestStatus.PENDING, rv.request_id.is_(None))
        .order_by(r.requested_at, r.id)
        .limit(limit + 1)
    ).all()
    return [RequestUnderReview(*row) for row in rows]


def requests_of_subscriptions(
    conn: Connection, subscription_ids: Sequence[int]
) -> list[SubscriptionRequest]:
    r = t.backup_requests.c
    rows = _select_in(
        conn,
        (r.id, r.subscription_id, r.requested_at, r.status),
        r.subscription_id,
        subscription_ids,
    )
    return [SubscriptionRequest(*row) for row in rows]


@dataclass(frozen=True)
class Review:
    """The sensor's decision on one request, remembered so it is not reviewed again."""

    request_id: int
    subscription_id: int
    accepted: bool
    reason_code: str | None
    status_detail: str | None  # Spanish, for a rejection
    run_key: str | None


def record_reviews(conn: Connection, reviews: Sequence[Review], now: datetime) -> None:
    """Reject the rejected (still pending only) and remember every decision, with its audit
    event and the subscriptions' quota windows, in one transaction."""
    r = t.backup_requests.c
    rejections = [
        {"b_id": review.request_id, "detail": review.status_detail}
        for review in reviews
        if not review.accepted
    ]
    if rejections:
        conn.execute(
            update(t.backup_requests)
            .where(r.id == bindparam("b_id"), r.status == RequestStatus.PENDING)
            .values(
                status=RequestStatus.REJECTED, status_detail=bindparam("detail"), finished_at=now
            ),
            rejections,
        )
    if not reviews:
        return
    conn.execute(
        insert(t.backup_request_reviews),
        [
            {
                "request_id": review.request_id,
                "reviewed_at": now,
                "reason_code": review.reason_code,
                "decision": "accepted" if review.accepted else "rejected",
                "run_key": review.run_key,
            }
            for review in reviews
        ],
    )
    conn.execute(
        insert(t.backup_request_events),
        [
            _event_row(
                review.request_id,
                review.subscription_id,
                RequestEvent.ACCEPTED if review.accepted else RequestEvent.REJECTED,
                SENSOR,
                review.reason_code,
                now,
            )
            for review in reviews
        ],
    )
    refresh_quota_windows_of(conn, [review.subscription_id for review in reviews], now)


def accepted_not_started(
    conn: Connection, *, reviewed_before: datetime, limit: int
) -> list[tuple[int, int, str | None]]:
    """(id, subscription_id, run_key) of requests accepted and still pending: those accepted
    before `reviewed_before` (their run request may have been lost), and re-runs support asked
    for (at once: a new run key)."""
    r, rv = t.backup_requests.c, t.backup_request_reviews.c
    rows = conn.execute(
        select(r.id, r.subscription_id, rv.run_key)
        .join(t.backup_request_reviews, rv.request_id == r.id)
        .where(
            r.status == RequestStatus.PENDING,
            rv.decision == "accepted",
            or_(rv.reviewed_at <= reviewed_before, rv.reason_code == RERUN_REASON),
        )
        .order_by(rv.reviewed_at, r.id)
        .limit(limit)
    ).all()
    return [(row.id, row.subscription_id, row.run_key) for row in rows]


# --- Housekeeping -----------------------------------------------------------------------------


def archives_to_expire(conn: Connection, now: datetime, limit: int) -> list[tuple[int, str, str]]:
    """(id, archive_key, status) of delivered requests whose link has expired, and of failed
    requests that still name an archive made before they failed, oldest expiry first."""
    r = t.backup_requests.c
    rows = conn.execute(
        select(r.id, r.archive_key, r.status)
        .where(
            or_(
                r.status == RequestStatus.DELIVERED,
                and_(r.status == RequestStatus.FAILED, r.archive_key.is_not(None)),
            ),
            r.link_expires_at <= now,
        )
        .order_by(r.link_expires_at, r.id)
        .limit(limit)
    ).all()
    return [(row.id, row.archive_key, row.status) for row in rows]


def unalerted_waiting_requests(
    conn: Connection, kind: str, requested_before: datetime, limit: int
) -> list[BackupRequest]:
    """Requests made before `requested_before`, still not delivered, with no `kind` alert yet."""
    r, a = t.backup_requests.c, t.backup_alerts.c
    rows = (
        conn.execute(
            select(t.backup_requests)
            .outerjoin(t.backup_alerts, and_(a.request_id == r.id, a.kind == kind))
            .where(
                r.status.in_(sorted(WAITING_STATUSES)),
                r.requested_at <= requested_before,
                a.request_id.is_(None),
            )
            .order_by(r.requested_at, r.id)
            .limit(limit)
        )
        .mappings()
        .all()
    )
    return [BackupRequest(**row) for row in rows]


def record_alert(engine: Engine, request_id: int, kind: str, sent_at: datetime) -> None:
    """Remember that an alert went out (a concurrent evaluation may have recorded it first)."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(t.backup_alerts).values(request_id=request_id, kind=kind, sent_at=sent_at)
            )
    except IntegrityError:
        pass  # recorded meanwhile; the alert went out either way


def subscriptions_with_requests(conn: Connection, *, after: int | None, limit: int) -> list[int]:
    """The next `limit` subscription ids (ascending, above `after`) that have any request."""
    r = t.backup_requests.c
    page = select(r.subscription_id).distinct().order_by(r.subscription_id).limit(limit)
    if after is not None:
        page = page.where(r.subscription_id > after)
    return list(conn.execute(page).scalars())


def request_history(
    conn: Connection, subscription_ids: Sequence[int]
) -> dict[int, list[PastRequest]]:
    """Every request of these subscriptions, every status, as the quota weighs them."""
    history: dict[int, list[PastRequest]] = {sid: [] for sid in subscription_ids}
    for row in requests_of_subscriptions(conn, subscription_ids):
        history[row.subscription_id].append(PastRequest(row.requested_at, row.status))
    return history


def replace_quota_windows(
    conn: Connection,
    *,
    after: int | None,
    through: int | None,
    windows: dict[int, QuotaWindow],
    now: datetime,
) -> tuple[int, int]:
    """Rewrite backup_quota_windows for subscription ids in (after, through] (None: unbounded),
    dropping rows of that range's subscriptions that no longer have any request. Returns (rows
    written, rows that were wrong or missing before): the repair pass's finding."""
    q = t.backup_quota_windows.c
    in_range = []
    if after is not None:
        in_range.append(q.subscription_id > after)
    if through is not None:
        in_range.append(q.subscription_id <= through)
    # The count of the last 360 days moves as time passes by itself; the dates do not, so only
    # they tell a window that a change failed to update.
    before = {
        row.subscription_id: (row.last_counted_backup_at, row.next_allowed_at)
        for row in conn.execute(select(t.backup_quota_windows).where(and_(true(), *in_range)))
    }
    conn.execute(delete(t.backup_quota_windows).where(and_(true(), *in_range)))
    rows = [_window_row(sid, window, now) for sid, window in windows.items()]
    if rows:
        conn.execute(insert(t.backup_quota_windows), rows)
    corrected = sum(
        1
        for sid, window in windows.items()
        if before.get(sid) != (window.last_counted_backup_at, window.next_allowed_at)
    )
    corrected += sum(1 for sid in before if sid not in windows)  # a row with no request left
    return len(rows), corrected
