"""The request sensor's reviews (backup_request_reviews) and support's alerts (backup_alerts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from backup_pipeline.platform import tables as t
from backup_pipeline.platform.events import event_row
from backup_pipeline.platform.quota_windows import refresh_quota_windows_of
from backup_pipeline.rules.checks import RequestUnderReview
from backup_pipeline.rules.request_state import (
    SENSOR,
    WAITING_STATUSES,
    BackupRequest,
    RequestEvent,
    RequestStatus,
)

RERUN_REASON = "support_rerun"  # backup_request_reviews.reason_code of a re-run by support


def review_of(request_id: int) -> Any:
    return t.backup_request_reviews.c.request_id == request_id


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
            event_row(
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
