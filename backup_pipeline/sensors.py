"""Sensors: pending requests become runs; runs that fail for good become failed requests."""

# No `from __future__ import annotations`: Dagster reads the sensors' context and resource
# annotations as real classes.

from collections.abc import Sequence
from typing import Any

import dagster as dg

from backup_pipeline import run_liveness
from backup_pipeline.jobs import backup_partitions
from backup_pipeline.platform import migrations
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.rules.target import run_tags
from backup_pipeline.services.failures import handle_failed_run, run_failure_cause
from backup_pipeline.services.intake import (
    AcceptedRequest,
    accepted_but_not_started,
    review_pending,
)

# How often the run_worker_watch sensor looks: a dead run is failed within about a minute.
RUN_WORKER_WATCH_SECONDS = 60


def _run_request(accepted: AcceptedRequest) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=accepted.run_key,
        partition_key=accepted.partition_key,
        tags=run_tags(accepted.id, accepted.subscription_id),
    )


def evaluate_pending_requests(platform_db: PlatformDatabaseResource, limit: int) -> dg.SensorResult:
    engine = platform_db.get_engine()
    intake = review_pending(engine, limit=limit)
    # Accepted earlier but never started: asked for again (Dagster skips a run key it has seen).
    reissued = accepted_but_not_started(engine)
    to_run = intake.accepted + [a for a in reissued if a not in intake.accepted]
    if not to_run:
        rejected = sum(intake.rejected.values())
        return dg.SensorResult(
            skip_reason=f"no request to run ({intake.reviewed} reviewed, {rejected} rejected)"
        )
    return dg.SensorResult(
        run_requests=[_run_request(accepted) for accepted in to_run],
        dynamic_partitions_requests=[
            backup_partitions.build_add_request([a.partition_key for a in to_run])
        ],
    )


def _fail_request_of_run(
    context: dg.RunStatusSensorContext,
    platform_db: PlatformDatabaseResource,
    mailer: MailerResource,
    archives: ObjectStoreResource,
    step_failures: Sequence[Any] = (),
    cancelled: bool = False,
    failure_message: str | None = None,
    cancel_cause: str = "RunCanceled",
) -> None:
    handle_failed_run(
        platform_db.get_engine(),
        mailer.get_mailer(),
        archives.get_store(),
        run_id=context.dagster_run.run_id,
        run_tags=context.dagster_run.tags,
        step_failures=step_failures,
        cancelled=cancelled,
        failure_message=failure_message,
        cancel_cause=cancel_cause,
        log=context.log,
    )


def build_sensors(backup_job: dg.JobDefinition, interval_seconds: int) -> list[dg.SensorDefinition]:
    """The request sensor (every `interval_seconds`) and the two that fail a request whose run
    failed or was cancelled."""

    @dg.sensor(
        job=backup_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Reviews pending backup requests (requester, quota, double clicks) in bounded batches; "
            "rejects with a Spanish reason or launches one run per request (partition = request id)."
        ),
    )
    def backup_request_sensor(
        context: dg.SensorEvaluationContext,
        platform_db: PlatformDatabaseResource,
        policy: BackupPolicyResource,
    ) -> dg.SensorResult:
        try:
            migrations.require_current(platform_db.get_engine())
        except migrations.SchemaBehind as behind:
            # Deployed before `backup-pipeline migrate` ran: touch no request until it has.
            context.log.warning(str(behind))
            return dg.SensorResult(skip_reason=str(behind))
        return evaluate_pending_requests(platform_db, policy.sensor_batch)

    @dg.run_failure_sensor(
        monitored_jobs=[backup_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "A backup run that failed for good marks its request failed (it does not count toward "
            "the quota) and emails support and the requester, once."
        ),
    )
    def backup_failure_sensor(
        context: dg.RunFailureSensorContext,
        platform_db: PlatformDatabaseResource,
        mailer: MailerResource,
        archives: ObjectStoreResource,
    ) -> None:
        _fail_request_of_run(
            context,
            platform_db,
            mailer,
            archives,
            context.get_step_failure_events(),
            failure_message=context.failure_event.message,
        )

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.CANCELED,
        monitored_jobs=[backup_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "A backup run cancelled in the UI marks its request failed (it does not count) and tells "
            "support and the requester, as a failed run does."
        ),
    )
    def backup_canceled_sensor(
        context: dg.RunStatusSensorContext,
        platform_db: PlatformDatabaseResource,
        mailer: MailerResource,
        archives: ObjectStoreResource,
    ) -> None:
        # Run monitoring cancels a run that outlived its maximum time: that is a failure of
        # ours, not support's cancellation.
        canceling = context.instance.all_logs(
            context.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_CANCELING
        )
        timed_out = any(run_failure_cause(entry.message) == "RunTimedOut" for entry in canceling)
        _fail_request_of_run(
            context,
            platform_db,
            mailer,
            archives,
            cancelled=True,
            cancel_cause="RunTimedOut" if timed_out else "RunCanceled",
        )

    @dg.sensor(
        name="run_worker_watch",
        minimum_interval_seconds=RUN_WORKER_WATCH_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Embedded instance (DefaultRunLauncher) only: fails a started run whose process is "
            "gone (a reboot, the OOM killer), so that its request fails as any failed run's does "
            "and its place in the run queue is freed. On Kubernetes, run monitoring does this."
        ),
    )
    def run_worker_watch(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        instance = context.instance
        if not run_liveness.watches_local_processes(instance):
            return dg.SkipReason("runs are not local processes: run monitoring watches them")
        failed = run_liveness.fail_runs_whose_process_died(instance)
        if failed:
            context.log.warning(f"failed {len(failed)} run(s) whose process was gone: {failed}")
        return dg.SkipReason(f"{len(failed)} run(s) whose process was gone failed")

    return [backup_request_sensor, backup_failure_sensor, backup_canceled_sensor, run_worker_watch]
