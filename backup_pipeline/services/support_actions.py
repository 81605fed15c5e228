"""What support may do to a request, with a stated reason kept in the audit trail: re-send its
link, re-run it after a failure, refuse it while pending, expire its archive now.

Plain functions over the platform database, the archives store and the mailer: the support jobs
in the Dagster UI and the CLI both call them, so both paths behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from backup_pipeline import platform as db
from backup_pipeline.mail import Mailer
from backup_pipeline.rules import quota
from backup_pipeline.rules.quota import PastRequest
from backup_pipeline.rules.request_state import OPEN_STATUSES, Actor, BackupRequest, RequestStatus
from backup_pipeline.services.delivery import resend_link as deliver_new_link
from backup_pipeline.storage import ObjectStore

# What the clinic reads when support refuses its request and gives no words of its own.
REFUSED_BY_SUPPORT = (
    "El equipo de soporte rechazó esta solicitud de respaldo. Si tiene dudas, comuníquese con "
    "el equipo de soporte."
)


# Support reads which rule of the quota stands in the way, as the clinic's status_detail says it.
_RULE_NAMES = {
    quota.QuotaRule.MIN_GAP: f"at least {quota.MIN_GAP.days} days between backups",
    quota.QuotaRule.MAX_IN_WINDOW: (
        f"at most {quota.MAX_IN_WINDOW} backups in {quota.WINDOW.days} days"
    ),
}


class SupportActionRefused(Exception):
    """The action does not apply to the request as it is; the message says why, for support."""


MIN_REASON_LENGTH = 3


def reason_refusal(field: str, value: str) -> str | None:
    """Why a stated reason is refused, in one line naming its field; None when it will do.
    The support jobs check it when they are launched, the actions again (the CLI's path)."""
    if len(" ".join(value.split())) < MIN_REASON_LENGTH:
        return (
            f"{field}: say why in a few words (kept in the request's audit trail); "
            "an empty or blank reason is refused"
        )
    return None


def _stated(reason: str, field: str = "reason") -> str:
    refusal = reason_refusal(field, reason)
    if refusal is not None:
        raise SupportActionRefused(refusal)
    return " ".join(reason.split())


def _request(engine: Engine, request_id: int) -> BackupRequest:
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    if request is None:
        raise SupportActionRefused(f"backup request {request_id} does not exist")
    return request


def resend_link(
    engine: Engine,
    archives: ObjectStore,
    mailer: Mailer,
    *,
    request_id: int,
    reason: str,
    link_ttl: timedelta,
    run_id: str | None = None,
) -> datetime:
    """A fresh link and email while the archive exists; no quota used. Returns the new expiry."""
    return deliver_new_link(
        engine,
        archives,
        mailer,
        request_id=request_id,
        link_ttl=link_ttl,
        actor=Actor.support(_stated(reason), run_id),
    )


@dataclass(frozen=True)
class Rerun:
    request_id: int
    subscription_id: int
    run_key: str  # the request sensor launches the run under this key
    quota_overridden: bool


def rerun_failed(
    engine: Engine,
    *,
    request_id: int,
    reason: str,
    override_quota: bool = False,
    override_reason: str = "",
    run_id: str | None = None,
    now: datetime | None = None,
    launched_by_sensor: bool = True,
) -> Rerun:
    """Send a failed request back to the queue for a new run.

    The quota is checked as for a request made now: a clinic that received another backup since
    the failure does not get a third in 360 days. Only an explicit override, with its own reason,
    goes past it; the audit trail keeps both reasons. `launched_by_sensor=False` when the caller
    runs it itself (the CLI): the sensor then launches it only if it is still pending later.
    """
    actor = Actor.support(_stated(reason), run_id)
    if override_quota:
        _stated(override_reason, "override_reason")  # asked for: say why, needed or not
    request = _request(engine, request_id)
    if request.status != RequestStatus.FAILED:
        raise SupportActionRefused(
            f"request {request_id} is {request.status}: only a failed request can be re-run"
        )
    now = now or db.utcnow()
    with engine.begin() as conn:
        siblings = [
            row
            for row in db.requests_of_subscriptions(conn, [request.subscription_id])
            if row.id != request_id
        ]
        if any(row.status in OPEN_STATUSES for row in siblings):
            raise SupportActionRefused(
                f"another request of subscription {request.subscription_id} is pending or "
                "running: it makes the clinic's backup"
            )
        history = [PastRequest(row.requested_at, row.status) for row in siblings]
        # The re-run counts at the request's own date: a backup the clinic received since then
        # would then share its window with one whose gap the quota never checked.
        later = [
            past for past in history if past.counts and past.requested_at > request.requested_at
        ]
        if later and not override_quota:
            raise SupportActionRefused(
                f"subscription {request.subscription_id} received a backup requested after this "
                "one; a re-run would count before it and break the 180-day gap (use "
                "override_quota with its own reason, or ask the clinic to request again)"
            )
        detail = None
        if later:
            detail = f"quota overridden: {_stated(override_reason, 'override_reason')}"
        elif (refused := quota.refusal(now, history)) is not None:
            if not override_quota:
                raise SupportActionRefused(
                    f"the quota ({_RULE_NAMES[refused.rule]}) allows subscription "
                    f"{request.subscription_id} its next backup from "
                    f"{refused.allowed_from:%Y-%m-%d %H:%M} UTC; re-running now needs "
                    "override_quota with its own reason"
                )
            detail = f"quota overridden: {_stated(override_reason, 'override_reason')}"
        run_key = f"backup-request-{request_id}-rerun-{db.rerun_count(conn, request_id) + 1}"
        if not db.requeue_for_rerun(
            conn,
            request_id,
            run_key=run_key,
            actor=actor,
            detail=detail,
            launch_now=launched_by_sensor,
        ):
            raise SupportActionRefused(f"request {request_id} changed meanwhile; try again")
    return Rerun(request_id, request.subscription_id, run_key, detail is not None)


def refuse_pending(
    engine: Engine,
    *,
    request_id: int,
    reason: str,
    message_to_clinic: str = "",
    run_id: str | None = None,
) -> str:
    """A pending request is rejected; returns the status_detail the clinic reads. Support's reason
    stays in the audit trail; the clinic reads `message_to_clinic` or a standard text."""
    actor = Actor.support(_stated(reason), run_id)
    request = _request(engine, request_id)
    if request.status != RequestStatus.PENDING:
        raise SupportActionRefused(
            f"request {request_id} is {request.status}: only a pending request can be refused "
            "(a running one is stopped by cancelling its run)"
        )
    detail = " ".join(message_to_clinic.split()) or REFUSED_BY_SUPPORT
    with engine.begin() as conn:
        if not db.refuse_pending(conn, request_id, status_detail=detail, actor=actor):
            raise SupportActionRefused(f"request {request_id} changed meanwhile; try again")
    return detail


def expire_now(
    engine: Engine,
    archives: ObjectStore,
    *,
    request_id: int,
    reason: str,
    run_id: str | None = None,
) -> bool:
    """Delete a delivered request's archive now (its link stops working) and mark it expired.
    Returns whether an archive was there to delete."""
    actor = Actor.support(_stated(reason), run_id)
    request = _request(engine, request_id)
    if request.status != RequestStatus.DELIVERED:
        raise SupportActionRefused(
            f"request {request_id} is {request.status}: only a delivered request has an archive "
            "to expire"
        )
    # The archive goes first: a request marked expired is never looked at again.
    with engine.connect() as conn:
        keys = [part.archive_key for part in db.parts_of(conn, request_id)]
    deleted = any([archives.delete(key) for key in keys])  # every part, not just the first
    with engine.begin() as conn:
        db.mark_expired(conn, request_id, actor=actor)
    return deleted
