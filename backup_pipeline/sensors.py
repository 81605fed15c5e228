"""Sensors: pending requests become runs; runs that fail for good become failed requests."""

# No `from __future__ import annotations`: Dagster reads the sensors' context and resource
# annotations as real classes.

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from backup_pipeline import migrations
from backup_pipeline.failures import fail_request, failure_cause
from backup_pipeline.intake import AcceptedRequest, accepted_but_not_started, review_pending
from backup_pipeline.jobs import backup_partitions
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources import platform_db as db
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.target import REQUEST_TAG, run_tags


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


def _schema_behind(
    context: dg.RunStatusSensorContext, platform_db: PlatformDatabaseResource, request_id: int
) -> bool:
    """A run failed because our tables are behind: the request is left as it is (not failed,
    nobody emailed) and runs again, under a new run key, once `backup-pipeline migrate` has."""
    engine = platform_db.get_engine()
    try:
        migrations.require_current(engine)
    except migrations.SchemaBehind as behind:
        context.log.warning(
            f"run {context.dagster_run.run_id}: its request is left unchanged; {behind}"
        )
        run_key = f"backup-request-{request_id}-after-{context.dagster_run.run_id[:8]}"
        try:
            with engine.begin() as conn:
                db.relaunch_after_migration(conn, request_id, run_key=run_key)
        except SQLAlchemyError:
            # Our reviews table itself is missing: the request was never reviewed, and will be.
            context.log.info(f"request {request_id} will be reviewed once migrated")
        return True
    return False


def _fail_request_of_run(
    context: dg.RunStatusSensorContext,
    platform_db: PlatformDatabaseResource,
    mailer: MailerResource,
    archives: ObjectStoreResource,
    step: str | None,
    error_class: str | None,
    error_message: str | None = None,
) -> None:
    tags = context.dagster_run.tags
    # The partition names the request too, for a run launched from the UI without our tags.
    request_id = tags.get(REQUEST_TAG) or tags.get("dagster/partition")
    if request_id is None or not request_id.isdigit():
        return
    if _schema_behind(context, platform_db, int(request_id)):
        return
    fail_request(
        platform_db.get_engine(),
        mailer,
        request_id=int(request_id),
        run_id=context.dagster_run.run_id,
        step=step,
        error_class=error_class,
        archives=archives.get_store(),
        error_message=error_message,
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
        # The cause's own class and message, for support's alert and the audit trail.
        cause = failure_cause(context.get_step_failure_events())
        _fail_request_of_run(context, platform_db, mailer, archives, *cause)

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
        _fail_request_of_run(context, platform_db, mailer, archives, None, "RunCanceled")

    return [backup_request_sensor, backup_failure_sensor, backup_canceled_sensor]
