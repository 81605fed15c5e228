"""The audit trail (backup_request_events): every change of a request's state, append-only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
)

from backup_pipeline.platform import tables as t
from backup_pipeline.platform.engine import utcnow
from backup_pipeline.rules.request_state import (
    Actor,
    RequestEvent,
)


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
        [event_row(request_id, subscription_id, event, actor, detail, at)],
    )


def event_row(
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
