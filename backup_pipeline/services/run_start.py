"""The first step of a backup run: the request must exist and still be runnable, and its
requester still authorised; then it is marked running and the run's target is fixed."""

from __future__ import annotations

from sqlalchemy import Engine

from backup_pipeline import platform as db
from backup_pipeline.mail import Mailer
from backup_pipeline.rules.request_state import RUNNABLE_STATUSES, RequestStatus
from backup_pipeline.rules.spanish import clinic_zone
from backup_pipeline.rules.target import BackupTarget, staging_prefix
from backup_pipeline.services.failures import fail_if_revoked
from backup_pipeline.storage import ObjectStore


class RunRefused(Exception):
    """The request cannot be run as it is (gone, or already done with); the message says why."""


class RequestFinished(RunRefused):
    """The request is done with (delivered, expired or refused): its run has nothing to do. Not
    a failure: a re-executed run of a delivered request must not paint its partition red."""


def _finished(request_id: int, status: RequestStatus) -> RequestFinished | None:
    if status == RequestStatus.DELIVERED:
        return RequestFinished(
            f"request {request_id} is already delivered: nothing to do; "
            "resend_link_job sends a new link"
        )
    if status == RequestStatus.EXPIRED:
        return RequestFinished(
            f"request {request_id} is already expired (its archive was deleted): nothing to do; "
            "the clinic may request a new backup"
        )
    if status == RequestStatus.REJECTED:
        return RequestFinished(
            f"request {request_id} was refused (rejected): nothing to do; its run was not needed"
        )
    return None


def begin_run(
    engine: Engine, mailer: Mailer, archives: ObjectStore, *, request_id: int, run_id: str
) -> BackupTarget:
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
        subscription = db.get_subscription(conn, request.subscription_id) if request else None
    if request is None:
        raise RunRefused(f"backup request {request_id} does not exist")
    if subscription is None:
        raise RunRefused(
            f"subscription {request.subscription_id} of request {request_id} does not exist"
        )
    if request.status == RequestStatus.FAILED:
        raise RunRefused(
            f"request {request_id} failed; re-run it with rerun_request_job (or "
            "`backup-pipeline run`), which re-checks the quota, rather than re-executing a run"
        )
    finished = _finished(request_id, request.status)
    if finished is not None:
        raise finished
    if request.status not in RUNNABLE_STATUSES:
        raise RunRefused(
            f"request {request_id} is {request.status}; a new run would not change it "
            "(resend_link_job gives a delivered request a fresh link)"
        )
    fail_if_revoked(
        engine,
        mailer,
        archives,
        request_id=request_id,
        run_id=run_id,
        checked_at="when its run started",
    )
    with engine.begin() as conn:
        if not db.mark_running(conn, request_id, run_id):
            now = db.get_request(conn, request_id)
            # Refused or finished by another run while this one started: nothing to do either.
            finished = _finished(request_id, now.status) if now is not None else None
            raise finished or RunRefused(f"request {request_id} changed meanwhile; not started")
    return BackupTarget(
        request_id=request_id,
        subscription_id=request.subscription_id,
        # Resolved once here: a zone name the platform let through with a typo falls back to the
        # default (spanish.clinic_zone) instead of failing every op that shows a date.
        timezone=clinic_zone(subscription.timezone).key,
        requested_at=request.requested_at,
        staging_prefix=staging_prefix(request_id, run_id),
    )
