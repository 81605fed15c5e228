"""Support's jobs, launched from the Dagster UI's Launchpad with a request id and a required
reason: re-send a link, re-run a failed request, refuse a pending one, expire an archive now.

Each is one op over backup_pipeline.services.support_actions (the CLI calls the same functions); its run's
metadata says what it did, and the audit trail keeps who (this run) and why.

A support job's run config is only what support fills in (request_id, reason, the override
fields): a job-level config mapping is the whole Launchpad, so no resource (storage, mail, the
database, the policy) can be redirected from there, and an empty or blank reason is refused when
the run is launched, before it exists, in one line naming the field.
"""

# No `from __future__ import annotations`: Dagster reads the ops' config annotations as classes.

from collections.abc import Callable
from typing import TypeVar

import dagster as dg
from pydantic import Field

from backup_pipeline.jobs import BACKUP_JOB_NAME
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.rules.target import REQUEST_TAG
from backup_pipeline.services import support_actions as actions
from backup_pipeline.services.delivery import DeliveryRefused

SUPPORT_TAG = "backup/support_action"
# "refused" on a support run whose action did not apply (see _unless_refused).
OUTCOME_TAG = "backup/support_outcome"
T = TypeVar("T")


class SupportActionConfig(dg.Config):
    request_id: int = Field(description="backup_requests.id of the request to act on")
    reason: str = Field(
        description="Why (required): kept in the request's audit trail with this run's id"
    )


class RerunConfig(SupportActionConfig):
    override_quota: bool = Field(
        default=False,
        description="Re-run even though the quota would refuse a request made now",
    )
    override_reason: str = Field(
        default="", description="Why the quota is overridden (required with override_quota)"
    )


class RefuseConfig(SupportActionConfig):
    message_to_clinic: str = Field(
        default="",
        description=(
            "What the clinic reads (Spanish, 'usted'); empty for the standard text. No patient data."
        ),
    )


def _unless_refused(
    context: dg.OpExecutionContext, request_id: int, call: Callable[[], T]
) -> T | None:
    """The action's result, or None when it does not apply to the request as it is (a bad id, a
    wrong state). Then nothing was changed, and the run says so in one line naming the id or
    the state, in its log, its metadata (`outcome: refused`) and its tag, and ends without
    failure: the Overview's red is kept for backups that failed (PRODUCT.md)."""
    try:
        return call()
    except (actions.SupportActionRefused, DeliveryRefused) as exc:
        context.log.warning(f"refused, nothing changed: {exc}")
        context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: "refused"})
        context.add_output_metadata(
            {"request_id": request_id, "outcome": "refused", "refused": str(exc)}
        )
        return None


# A backup run still waiting for its process: a refusal cancels it, so that no run of a refused
# request fails (one that starts all the same ends at once without failure: jobs.start_backup).
_WAITING_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]


def cancel_waiting_backup_runs(instance: dg.DagsterInstance, request_id: int) -> list[str]:
    """Cancel the request's backup runs that are queued or starting; returns their ids."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=BACKUP_JOB_NAME,
            tags={REQUEST_TAG: str(request_id)},
            statuses=_WAITING_RUN_STATUSES,
        )
    )
    for run in runs:
        if run.status == dg.DagsterRunStatus.QUEUED:
            # As the UI's Terminate does for a queued run: out of the queue, canceled.
            instance.run_coordinator.cancel_run(run.run_id)
        else:
            # Launched but not yet running our code: marked canceled as the UI's "mark as
            # canceled immediately" does; a run worker that starts later sees it and stops.
            instance.report_run_canceled(
                run, message=f"request {request_id} was refused by support before it started"
            )
    return [run.run_id for run in runs]


@dg.op(description="A fresh signed link and email for a delivered request; no quota used.")
def resend_link_op(
    context: dg.OpExecutionContext,
    config: SupportActionConfig,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    mailer: MailerResource,
    policy: BackupPolicyResource,
) -> None:
    expires_at = _unless_refused(
        context,
        config.request_id,
        lambda: actions.resend_link(
            platform_db.get_engine(),
            archives.get_store(),
            mailer.get_mailer(),
            request_id=config.request_id,
            reason=config.reason,
            link_ttl=policy.link_ttl,
            run_id=context.run_id,
        ),
    )
    if expires_at is None:
        return
    context.add_output_metadata(
        {
            "request_id": config.request_id,
            "outcome": "done",
            "link_expires_at": expires_at.isoformat() + "Z",
        }
    )


@dg.op(
    description=(
        "Sends a failed request back to the queue; the request sensor launches its new run. "
        "The quota is checked as for a request made now unless explicitly overridden."
    )
)
def rerun_request_op(
    context: dg.OpExecutionContext, config: RerunConfig, platform_db: PlatformDatabaseResource
) -> None:
    rerun = _unless_refused(
        context,
        config.request_id,
        lambda: actions.rerun_failed(
            platform_db.get_engine(),
            request_id=config.request_id,
            reason=config.reason,
            override_quota=config.override_quota,
            override_reason=config.override_reason,
            run_id=context.run_id,
        ),
    )
    if rerun is None:
        return
    context.add_output_metadata(
        {
            "request_id": rerun.request_id,
            "outcome": "done",
            "subscription_id": rerun.subscription_id,
            "run_key": rerun.run_key,
            "quota_overridden": rerun.quota_overridden,
        }
    )


@dg.op(description="Rejects a pending request; the clinic reads the message (or a standard one).")
def refuse_request_op(
    context: dg.OpExecutionContext, config: RefuseConfig, platform_db: PlatformDatabaseResource
) -> None:
    detail = _unless_refused(
        context,
        config.request_id,
        lambda: actions.refuse_pending(
            platform_db.get_engine(),
            request_id=config.request_id,
            reason=config.reason,
            message_to_clinic=config.message_to_clinic,
            run_id=context.run_id,
        ),
    )
    if detail is None:
        return
    cancelled = cancel_waiting_backup_runs(context.instance, config.request_id)
    if cancelled:
        context.log.info(f"request {config.request_id}: cancelled its waiting backup run(s)")
    context.add_output_metadata(
        {
            "request_id": config.request_id,
            "outcome": "done",
            "status": "rejected",
            "cancelled_runs": cancelled,
        }
    )


@dg.op(description="Deletes a delivered request's archive now (the link stops working): expired.")
def expire_archive_op(
    context: dg.OpExecutionContext,
    config: SupportActionConfig,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
) -> None:
    deleted = _unless_refused(
        context,
        config.request_id,
        lambda: actions.expire_now(
            platform_db.get_engine(),
            archives.get_store(),
            request_id=config.request_id,
            reason=config.reason,
            run_id=context.run_id,
        ),
    )
    if deleted is None:
        return
    context.add_output_metadata(
        {
            "request_id": config.request_id,
            "outcome": "done",
            "status": "expired",
            "archive_deleted": deleted,
        }
    )


def _launch_refusal(config: SupportActionConfig) -> str | None:
    """Why the Launchpad's config is refused, in one line naming the field; None when fine."""
    if config.request_id <= 0:
        return f"request_id: {config.request_id} is not a request id (backup_requests.id)"
    refusal = actions.reason_refusal("reason", config.reason)
    if refusal is None and isinstance(config, RerunConfig) and config.override_quota:
        refusal = actions.reason_refusal("override_reason", config.override_reason)
    return refusal


def _support_config(
    op: dg.OpDefinition, config_class: type[SupportActionConfig]
) -> dg.ConfigMapping:
    """The job's whole run config: the op's fields, checked when the run is launched."""

    # Dagster calls this while it plans the run, before the run exists: the Launchpad's Launch
    # (GraphQL), the Python APIs alike. DagsterInvalidConfigError is Dagster's own error for
    # config that does not hold: its message comes first, not a wrapper naming the mapping.
    def check_and_map(config: config_class) -> dg.RunConfig:  # type: ignore[valid-type]
        refusal = _launch_refusal(config)
        if refusal is not None:
            raise dg.DagsterInvalidConfigError(refusal, [], config.model_dump())
        return dg.RunConfig(ops={op.name: config})

    return dg.config_mapping(check_and_map)


def _support_job(
    name: str,
    description: str,
    op: dg.OpDefinition,
    config_class: type[SupportActionConfig],
) -> dg.JobDefinition:
    @dg.job(
        name=name,
        description=description,
        tags={SUPPORT_TAG: name, "team": "backups", "dagster/priority": "20"},
        executor_def=dg.in_process_executor,
        config=_support_config(op, config_class),
    )
    def support_job() -> None:
        op()

    return support_job


resend_link_job = _support_job(
    "resend_link_job",
    "Support: a fresh download link and email for a delivered request (no quota used).",
    resend_link_op,
    SupportActionConfig,
)
rerun_request_job = _support_job(
    "rerun_request_job",
    "Support: re-run a failed request (quota re-checked; an override needs its own reason).",
    rerun_request_op,
    RerunConfig,
)
refuse_request_job = _support_job(
    "refuse_request_job",
    "Support: refuse a pending request; the clinic reads why.",
    refuse_request_op,
    RefuseConfig,
)
expire_archive_job = _support_job(
    "expire_archive_job",
    "Support: delete a delivered request's archive now and mark it expired.",
    expire_archive_op,
    SupportActionConfig,
)

SUPPORT_JOBS = [resend_link_job, rerun_request_job, refuse_request_job, expire_archive_job]
