"""The request sensor's work: review a bounded batch of pending requests with a few set queries."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from backup_pipeline import platform as db
from backup_pipeline.rules.checks import review_request
from backup_pipeline.rules.quota import PastRequest
from backup_pipeline.rules.request_state import RequestStatus

# An accepted request still pending this long after its review may have lost its run request (a
# tick whose result never reached Dagster): the sensor asks again, and the run key makes a second
# request for a run that does exist a no-op.
REISSUE_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class AcceptedRequest:
    id: int
    subscription_id: int
    # Dagster launches one run per run key: a re-run by support comes with a new one.
    stored_run_key: str | None = None

    @property
    def run_key(self) -> str:
        return self.stored_run_key or f"backup-request-{self.id}"

    @property
    def partition_key(self) -> str:
        return str(self.id)


@dataclass
class IntakeResult:
    accepted: list[AcceptedRequest] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)  # reason code -> count
    reviewed: int = 0
    more_pending: bool = False


def review_pending(
    engine: Engine, *, limit: int = 2_000, now: datetime | None = None
) -> IntakeResult:
    """Accept or reject up to `limit` pending requests that no tick has reviewed yet.

    Rejections are written to backup_requests at once; every decision is recorded in
    backup_request_reviews so that an accepted request waiting for its run is not reviewed again.
    """
    now = now or db.utcnow()
    result = IntakeResult()
    with engine.begin() as conn:
        batch = db.unreviewed_pending(conn, limit)
        result.more_pending = len(batch) > limit
        batch = batch[:limit]
        if not batch:
            return result
        requesters = db.requesters_by_id(conn, [b.requested_by_user_id for b in batch])
        subscription_ids = [b.subscription_id for b in batch]
        subscriptions = db.subscriptions_by_id(conn, subscription_ids)
        # Every request of these subscriptions: their statuses change as this batch is decided,
        # so that a rejected request does not block its sibling and an accepted one does.
        statuses: dict[int, str] = {}
        by_subscription: dict[int, list[tuple[int, datetime]]] = defaultdict(list)
        for row in db.requests_of_subscriptions(conn, subscription_ids):
            statuses[row.id] = row.status
            by_subscription[row.subscription_id].append((row.id, row.requested_at))

        reviews: list[db.Review] = []
        for request in batch:
            siblings = [
                (other_id, at)
                for other_id, at in by_subscription[request.subscription_id]
                if other_id != request.id
            ]
            subscription = subscriptions.get(request.subscription_id)
            decision = review_request(
                request,
                requester=requesters.get(request.requested_by_user_id),
                subscription_status=subscription.status if subscription else None,
                timezone=subscription.timezone if subscription else None,
                history=[PastRequest(at, statuses[other_id]) for other_id, at in siblings],
                other_open=[(other_id, statuses[other_id]) for other_id, _ in siblings],
            )
            if decision.accepted:
                accepted = AcceptedRequest(request.id, request.subscription_id)
                result.accepted.append(accepted)
                reviews.append(
                    db.Review(
                        request.id, request.subscription_id, True, None, None, accepted.run_key
                    )
                )
            else:
                statuses[request.id] = RequestStatus.REJECTED
                reviews.append(
                    db.Review(
                        request.id,
                        request.subscription_id,
                        False,
                        decision.reason_code,
                        decision.status_detail,
                        None,
                    )
                )
                code = decision.reason_code or "unknown"
                result.rejected[code] = result.rejected.get(code, 0) + 1
        db.record_reviews(conn, reviews, now)
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
    now = now or db.utcnow()
    with engine.connect() as conn:
        rows = db.accepted_not_started(conn, reviewed_before=now - older_than, limit=limit)
    return [AcceptedRequest(request_id, sid, run_key) for request_id, sid, run_key in rows]
