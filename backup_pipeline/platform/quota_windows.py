"""Quota windows (backup_quota_windows), kept current in the transaction of every change that counts."""

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
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from backup_pipeline.platform import tables as t
from backup_pipeline.platform.engine import select_in, utcnow
from backup_pipeline.rules.quota import PastRequest, QuotaWindow, quota_window

# pg_advisory_xact_lock's first key for quota windows ('bak'): apart from other lock users.
QUOTA_LOCK_NAMESPACE = 0x62616B


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


@dataclass(frozen=True)
class SubscriptionRequest:
    """Another request of a subscription under review, as the checks weigh it."""

    id: int
    subscription_id: int
    requested_at: datetime
    status: str


def requests_of_subscriptions(
    conn: Connection, subscription_ids: Sequence[int]
) -> list[SubscriptionRequest]:
    r = t.backup_requests.c
    rows = select_in(
        conn,
        (r.id, r.subscription_id, r.requested_at, r.status),
        r.subscription_id,
        subscription_ids,
    )
    return [SubscriptionRequest(*row) for row in rows]


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
