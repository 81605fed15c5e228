"""The first step of a backup run: the request must exist and still be runnable, and its
requester still authorised; then it is marked running and the run's target is fixed."""

from __future__ import annotations

from sqlalchemy import Engine

from backup_pipeline.failures import fail_if_revoked
from backup_pipeline.request_state import RUNNABLE_STATUSES, RequestStatus
from backup_pipeline.resources import platform_db as db
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.spanish import clinic_zone
from backup_pipeline.storage import ObjectStore
from backup_pipeline.target import BackupTarget, staging_prefix


class RunRefused(Exception):
    """The request cannot be run as it is (gone, or already done with); the message says why."""


def begin_run(
    engine: Engine, mailer: MailerResource, archives: ObjectStore, *, request_id: int, run_id: str
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
            raise RunRefused(f"request {request_id} changed meanwhile; not started")
    return BackupTarget(
        request_id=request_id,
        subscription_id=request.subscription_id,
        # Resolved once here: a zone name the platform let through with a typo falls back to the
        # default (spanish.clinic_zone) instead of failing every op that shows a date.
        timezone=clinic_zone(subscription.timezone).key,
        requested_at=request.requested_at,
        staging_prefix=staging_prefix(request_id, run_id),
    )
