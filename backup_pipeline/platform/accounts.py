"""The platform's own tables, read only: subscriptions and their users (the requesters)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    Connection,
    Engine,
    func,
    select,
)

from backup_pipeline.platform import tables as t
from backup_pipeline.platform.engine import select_in
from backup_pipeline.rules.request_state import (
    Requester,
    Subscription,
)


def next_subscription_id(engine: Engine) -> int:
    """The first id after every subscription's (seeding a development database)."""
    with engine.connect() as conn:
        current = conn.execute(select(func.max(t.subscriptions.c.id))).scalar()
    return (current or 0) + 1


def get_subscription(conn: Connection, subscription_id: int) -> Subscription | None:
    found = subscriptions_by_id(conn, [subscription_id])
    return found.get(subscription_id)


def get_requester(conn: Connection, user_id: int) -> Requester | None:
    return requesters_by_id(conn, [user_id]).get(user_id)


def subscriptions_by_id(conn: Connection, ids: Sequence[int]) -> dict[int, Subscription]:
    s = t.subscriptions.c
    rows = select_in(conn, (s.id, s.name, s.timezone, s.status), s.id, ids)
    return {row.id: Subscription(row.id, row.name, row.timezone, row.status) for row in rows}


def requesters_by_id(conn: Connection, ids: Sequence[int]) -> dict[int, Requester]:
    u = t.users.c
    rows = select_in(
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
