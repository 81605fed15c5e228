"""The request sensor's work: review a bounded batch of pending requests with a few set queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from backup_pipeline import tables as t
from backup_pipeline.checks import Requester, RequestUnderReview, review_request
from backup_pipeline.quota import PastRequest
from backup_pipeline.resources.platform_db import utcnow

IN_CHUNK = 500  # ids per IN (...) list: well under every driver's parameter limit
# An accepted request still pending this long after its review may have lost its run request (a
# tick whose result never reached Dagster): the sensor asks again, and the run key makes a second
# request for a run that does exist a no-op.
REISSUE_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class AcceptedRequest:
    id: int
    subscription_id: int

    @property
    def run_key(self) -> str:
        return f"backup-request-{self.id}"

    @property
    def partition_key(self) -> str:
        return str(self.id)


@dataclass
class IntakeResult:
    accepted: list[AcceptedRequest] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)  # reason code -> count
    reviewed: int = 0
    more_pending: bool = False


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start : start + IN_CHUNK]


def _unreviewed_pending(conn: Connection, limit: int) -> list[RequestUnderReview]:
    r, rv = t.backup_requests.c, t.backup_request_reviews.c
    rows = conn.execute(
        select(r.id, r.subscription_id, r.requested_by_user_id, r.requested_at)
        .outerjoin(t.backup_request_reviews, rv.request_id == r.id)
        .where(r.status == "pending", rv.request_id.is_(None))
        .order_by(r.requested_at, r.id)
        .limit(limit + 1)
    ).all()
    return [RequestUnderReview(*row) for row in rows]


def _select_in(conn: Connection, columns: Iterable, key, ids: Sequence[int]) -> list:
    rows: list = []
    for chunk in _chunks(sorted(set(ids))):
        rows.extend(conn.execute(select(*columns).where(key.in_(chunk))).all())
    return rows


def review_pending(
    engine: Engine, *, limit: int = 2_000, now: datetime | None = None
) -> IntakeResult:
    """Accept or reject up to `limit` pending requests that no tick has reviewed yet.

    Rejections are written to backup_requests at once; every decision is recorded in
    backup_request_reviews so that an accepted request waiting for its run is not reviewed again.
    """
    now = now or utcnow()
    result = IntakeResult()
    with engine.begin() as conn:
        batch = _unreviewed_pending(conn, limit)
        result.more_pending = len(batch) > limit
        batch = batch[:limit]
        if not batch:
            return result
        u, s, r = t.users.c, t.subscriptions.c, t.backup_requests.c
        users = {
            row.id: Requester(row.id, row.subscription_id, row.is_active, row.can_request_backup)
            for row in _select_in(
                conn,
                (u.id, u.subscription_id, u.is_active, u.can_request_backup),
                u.id,
                [b.requested_by_user_id for b in batch],
            )
        }
        subscription_ids = [b.subscription_id for b in batch]
        subscriptions = {
            row.id: (row.status, row.timezone)
            for row in _select_in(conn, (s.id, s.status, s.timezone), s.id, subscription_ids)
        }
        # Every request of these subscriptions: their statuses change as this batch is decided,
        # so that a rejected request does not block its sibling and an accepted one does.
        statuses: dict[int, str] = {}
        by_subscription: dict[int, list[tuple[int, datetime]]] = defaultdict(list)
        for row in _select_in(
            conn,
            (r.id, r.subscription_id, r.requested_at, r.status),
            r.subscription_id,
            subscription_ids,
        ):
            statuses[row.id] = row.status
            by_subscription[row.subscription_id].append((row.id, row.requested_at))

        rejections: list[dict] = []
        reviews: list[dict] = []
        for request in batch:
            siblings = [
                (other_id, at)
                for other_id, at in by_subscription[request.subscription_id]
                if other_id != request.id
            ]
            status, timezone = subscriptions.get(request.subscription_id, (None, None))
            decision = review_request(
                request,
                requester=users.get(request.requested_by_user_id),
                subscription_status=status,
                timezone=timezone,
                history=[PastRequest(at, statuses[other_id]) for other_id, at in siblings],
                other_open=[(other_id, statuses[other_id]) for other_id, _ in siblings],
            )
            review = {
                "request_id": request.id,
                "reviewed_at": now,
                "reason_code": decision.reason_code,
            }
            if decision.accepted:
                accepted = AcceptedRequest(request.id, request.subscription_id)
                result.accepted.append(accepted)
                reviews.append({**review, "decision": "accepted", "run_key": accepted.run_key})
            else:
                statuses[request.id] = "rejected"
                rejections.append({"b_id": request.id, "detail": decision.status_detail})
                reviews.append({**review, "decision": "rejected", "run_key": None})
                code = decision.reason_code or "unknown"
                result.rejected[code] = result.rejected.get(code, 0) + 1
        if rejections:
            conn.execute(
                update(t.backup_requests)
                .where(r.id == bindparam("b_id"), r.status == "pending")
                .values(status="rejected", status_detail=bindparam("detail"), finished_at=now),
                rejections,
            )
        conn.execute(insert(t.backup_request_reviews), reviews)
        result.reviewed = len(batch)
    return result


def accepted_but_not_started(
    engine: Engine,
    *,
    older_than: timedelta = REISSUE_AFTER,
    limit: int = 500,
    now: datetime | None = None,
) -> list[AcceptedRequest]:
    """Requests accepted at least `older_than` ago that no run has marked running yet."""
    now = now or utcnow()
    r, rv = t.backup_requests.c, t.backup_request_reviews.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.id, r.subscription_id)
            .join(t.backup_request_reviews, rv.request_id == r.id)
            .where(
                r.status == "pending",
                rv.decision == "accepted",
                rv.reviewed_at <= now - older_than,
            )
            .order_by(rv.reviewed_at, r.id)
            .limit(limit)
        ).all()
    return [AcceptedRequest(row.id, row.subscription_id) for row in rows]
