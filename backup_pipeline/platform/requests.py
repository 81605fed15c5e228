"""backup_requests: one request's state and its transitions, its archive, parts and contents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)

from backup_pipeline.platform import tables as t
from backup_pipeline.platform.engine import select_in, utcnow
from backup_pipeline.platform.events import append_event
from backup_pipeline.platform.quota_windows import refresh_quota_windows_of
from backup_pipeline.platform.reviews import RERUN_REASON, review_of
from backup_pipeline.rules.request_state import (
    HOUSEKEEPING,
    OPEN_STATUSES,
    RUNNABLE_STATUSES,
    Actor,
    BackupRequest,
    RequestEvent,
    RequestStatus,
)


def get_request(conn: Connection, request_id: int) -> BackupRequest | None:
    row = (
        conn.execute(select(t.backup_requests).where(t.backup_requests.c.id == request_id))
        .mappings()
        .first()
    )
    return BackupRequest(**row) if row else None


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
        conn.execute(delete(t.backup_request_reviews).where(review_of(request_id)))
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
        conn.execute(delete(t.backup_request_reviews).where(review_of(request_id)))
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
    return {row.id: row.status for row in select_in(conn, (r.id, r.status), r.id, request_ids)}


def status_and_time_of(
    conn: Connection, request_ids: Sequence[int]
) -> dict[int, tuple[str, datetime]]:
    """(status, requested_at) of each request id that names a row."""
    r = t.backup_requests.c
    rows = select_in(conn, (r.id, r.status, r.requested_at), r.id, request_ids)
    return {row.id: (row.status, row.requested_at) for row in rows}


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
