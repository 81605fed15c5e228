"""Sensors: pending requests become runs; runs that fail for good become failed requests."""

from __future__ import annotations

import os

import dagster as dg

from backup_pipeline.failures import error_class_of, fail_request
from backup_pipeline.intake import AcceptedRequest, accepted_but_not_started, review_pending
from backup_pipeline.jobs import REQUEST_TAG, SUBSCRIPTION_TAG, backup_job, backup_partitions
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource

SENSOR_INTERVAL_SECONDS = int(os.environ.get("BACKUP_SENSOR_INTERVAL_SECONDS", "30"))
SENSOR_BATCH = int(os.environ.get("BACKUP_SENSOR_BATCH", "2000"))


def run_tags(request_id: int, subscription_id: int) -> dict[str, str]:
    """Ids only: a clinic's runs are found by these in the UI, and tags never carry names."""
    return {REQUEST_TAG: str(request_id), SUBSCRIPTION_TAG: str(subscription_id)}


def _run_request(accepted: AcceptedRequest) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=accepted.run_key,
        partition_key=accepted.partition_key,
        tags=run_tags(accepted.id, accepted.subscription_id),
    )


def evaluate_pending_requests(
    platform_db: PlatformDatabaseResource, limit: int = SENSOR_BATCH
) -> dg.SensorResult:
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


@dg.sensor(
    job=backup_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Reviews pending backup requests (requester, quota, double clicks) in bounded batches; "
        "rejects with a Spanish reason or launches one run per request (partition = request id)."
    ),
)
def backup_request_sensor(
    context: dg.SensorEvaluationContext, platform_db: PlatformDatabaseResource
) -> dg.SensorResult:
    return evaluate_pending_requests(platform_db)


def _failed_step(context: dg.RunFailureSensorContext) -> tuple[str | None, str | None]:
    for event in context.get_step_failure_events():
        error = event.event_specific_data.error if event.event_specific_data else None
        return event.step_key, error_class_of(error)
    return None, None


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
    request_id = context.dagster_run.tags.get(REQUEST_TAG) or context.dagster_run.tags.get(
        "dagster/partition"
    )
    if request_id is None or not request_id.isdigit():
        return
    step, error_class = _failed_step(context)
    fail_request(
        platform_db.get_engine(),
        mailer,
        request_id=int(request_id),
        run_id=context.dagster_run.run_id,
        step=step,
        error_class=error_class,
        archives=archives.get_store(),
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
    request_id = context.dagster_run.tags.get(REQUEST_TAG)
    if request_id is None or not request_id.isdigit():
        return
    fail_request(
        platform_db.get_engine(),
        mailer,
        request_id=int(request_id),
        run_id=context.dagster_run.run_id,
        step=None,
        error_class="RunCanceled",
        archives=archives.get_store(),
    )
