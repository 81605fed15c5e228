"""A backup request as plain values: its status (one enum), the request, its clinic, its requester."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class RequestStatus(StrEnum):
    """backup_requests.status: the same strings the platform's database holds."""

    PENDING = "pending"
    RUNNING = "running"
    DELIVERED = "delivered"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"


# A backup is being made or waits to be: a second request of the clinic is a double click.
OPEN_STATUSES: frozenset[RequestStatus] = frozenset({RequestStatus.PENDING, RequestStatus.RUNNING})
# A failure of ours costs the clinic nothing, and a rejected request made no backup
# (PRODUCT.md, "The request's life"): every other status uses up the quota.
COUNTED_STATUSES: frozenset[RequestStatus] = frozenset(
    {RequestStatus.PENDING, RequestStatus.RUNNING, RequestStatus.DELIVERED, RequestStatus.EXPIRED}
)
# Nothing more will happen to these unless support steps in.
FINISHED_STATUSES: frozenset[RequestStatus] = frozenset(
    {RequestStatus.DELIVERED, RequestStatus.FAILED, RequestStatus.EXPIRED, RequestStatus.REJECTED}
)
# The clinic is still waiting for a link (support hears of it after the late threshold).
WAITING_STATUSES: frozenset[RequestStatus] = frozenset(
    {RequestStatus.PENDING, RequestStatus.RUNNING, RequestStatus.FAILED}
)
# A run may (re)start from these: pending, or running when a killed run is repaired. A failed
# request goes back to pending through support's re-run (quota re-checked) first; a delivered,
# expired or rejected one is done with.
RUNNABLE_STATUSES: frozenset[RequestStatus] = frozenset(
    {RequestStatus.PENDING, RequestStatus.RUNNING}
)


class RequestEvent(StrEnum):
    """A change of a request's state, as the audit trail (backup_request_events) names it."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RUNNING = "running"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its run was cancelled: the request failed
    LINK_RESENT = "link_resent"
    RERUN = "rerun"  # support sent a failed request back to the queue
    EXPIRED = "expired"


@dataclass(frozen=True)
class Actor:
    """Who changed a request: the request sensor, a run, housekeeping, or support (with their
    stated reason). Never a person's name: support acts through Dagster, which knows who."""

    kind: str  # 'sensor' | 'run' | 'housekeeping' | 'support'
    run_id: str | None = None
    reason: str | None = None

    @classmethod
    def run(cls, run_id: str) -> Actor:
        return cls("run", run_id=run_id)

    @classmethod
    def support(cls, reason: str, run_id: str | None = None) -> Actor:
        return cls("support", run_id=run_id, reason=reason)


SENSOR = Actor("sensor")
HOUSEKEEPING = Actor("housekeeping")


@dataclass(frozen=True)
class BackupRequest:
    """One row of backup_requests; every timestamp naive UTC."""

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
    """The user who made a request, as the authorisation checks and the link email need it."""

    id: int
    subscription_id: int
    is_active: bool
    can_request_backup: bool
    email: str = ""
