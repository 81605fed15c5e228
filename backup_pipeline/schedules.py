"""Schedules that keep the pipeline in check: expired links, staging leftovers, late alerts, quotas.

Dagster schedules must target a job, so each one launches a small housekeeping job whose op calls
backup_pipeline.services.housekeeping (plain Python, tested without Dagster). A run, unlike work done
inside a tick, has its own logs, metadata, retries and no gRPC deadline. Each run is judged as of
its tick's scheduled time (op config `as_of`), so a run that waited in the queue or is re-executed
does the same work. The jobs carry a `backup/housekeeping` tag (deploy/dagster.yaml allows one run
per job at a time) and a higher `dagster/priority` than backups, so a long backup queue cannot hold
them back for hours.
"""

# No `from __future__ import annotations`: Dagster reads the ops' context and config annotations
# as real classes and rejects strings.
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from backup_pipeline.jobs import backup_partitions
from backup_pipeline.platform import migrations, utcnow
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.services import housekeeping as hk

HOUSEKEEPING_TAG = "backup/housekeeping"

# Housekeeping is idempotent, so a storage or database hiccup is simply tried again.
HOUSEKEEPING_RETRY = dg.RetryPolicy(max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL)


class AsOfConfig(dg.Config):
    """The moment the work is judged at; the schedule passes its tick's time."""

    as_of: str = Field(
        default="",
        description="Naive UTC ISO datetime (e.g. 2026-03-01T10:00:00); empty means now.",
    )

    def moment(self) -> datetime:
        if not self.as_of:
            return utcnow()
        moment = datetime.fromisoformat(self.as_of)
        return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _housekeeping_job(name: str, description: str, ops: list[dg.OpDefinition]) -> dg.JobDefinition:
    @dg.job(
        name=name,
        description=description,
        tags={HOUSEKEEPING_TAG: name, "dagster/priority": "10", "team": "backups"},
        # Light work: one process, not one per op.
        executor_def=dg.in_process_executor,
    )
    def housekeeping() -> None:
        for op in ops:
            op()

    return housekeeping


# --- Ops ----------------------------------------------------------------------------------


def _skip_while_behind(
    context: dg.OpExecutionContext, platform_db: PlatformDatabaseResource
) -> dg.Output[int] | None:
    """Our tables are behind this code (deployed before `backup-pipeline migrate`): do nothing,
    and say so in the log and the run's metadata instead of failing on a missing table."""
    try:
        migrations.require_current(platform_db.get_engine())
    except migrations.SchemaBehind as behind:
        context.log.warning(str(behind))
        return dg.Output(0, metadata={"skipped": str(behind)})
    return None


@dg.op(
    name="expire_archives",
    retry_policy=HOUSEKEEPING_RETRY,
    description="Deletes the archive of each delivered request whose link expired; marks it expired.",
)
def expire_archives_op(
    context: dg.OpExecutionContext,
    config: AsOfConfig,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    policy: BackupPolicyResource,
) -> dg.Output[int]:
    if (skipped := _skip_while_behind(context, platform_db)) is not None:
        return skipped
    now = config.moment()
    expired = hk.expire_archives(
        platform_db.get_engine(), archives.get_store(), now, limit=policy.expire_batch
    )
    context.log.info(f"{expired} request(s) expired as of {now:%Y-%m-%d %H:%M} UTC")
    return dg.Output(
        expired,
        metadata={"requests_expired": expired, "batch_full": expired >= policy.expire_batch},
    )


@dg.op(
    name="remove_staging_leftovers",
    retry_policy=HOUSEKEEPING_RETRY,
    description=(
        "Deletes the staging/<request>/ objects that failed runs of finished requests left, and "
        "partial files of writes a killed run never finished."
    ),
)
def remove_staging_leftovers_op(
    context: dg.OpExecutionContext,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    policy: BackupPolicyResource,
) -> dg.Output[int]:
    if (skipped := _skip_while_behind(context, platform_db)) is not None:
        return skipped
    store = archives.get_store()
    sweep = hk.remove_staging_leftovers(platform_db.get_engine(), store, limit=policy.staging_batch)
    partial = hk.remove_abandoned_writes(store, utcnow())
    context.log.info(
        f"staging: {sweep.objects_deleted} object(s) of {sweep.requests_cleared} finished "
        f"request(s) deleted; {sweep.requests_open} open and {sweep.unknown} unknown folder(s) "
        f"kept; {partial} abandoned partial write(s) deleted"
    )
    return dg.Output(
        sweep.objects_deleted,
        metadata={
            "objects_deleted": sweep.objects_deleted,
            "requests_cleared": sweep.requests_cleared,
            "open_requests_kept": sweep.requests_open,
            "unknown_folders_kept": sweep.unknown,
            "abandoned_partial_writes_deleted": partial,
        },
    )


@dg.op(
    name="alert_late_requests",
    retry_policy=HOUSEKEEPING_RETRY,
    description="Emails support once about each request not delivered within the late threshold.",
)
def alert_late_requests_op(
    context: dg.OpExecutionContext,
    config: AsOfConfig,
    platform_db: PlatformDatabaseResource,
    mailer: MailerResource,
    policy: BackupPolicyResource,
) -> dg.Output[int]:
    if (skipped := _skip_while_behind(context, platform_db)) is not None:
        return skipped
    alerts = hk.alert_late_requests(
        platform_db.get_engine(),
        mailer.get_mailer(),
        late_after=policy.late_after,
        now=config.moment(),
        limit=policy.late_alert_batch,
    )
    context.log.info(
        f"late alerts: {alerts.sent} sent, {alerts.deferred} deferred to the next tick, "
        f"{len(alerts.failed)} refused"
    )
    if alerts.failed:
        # A permanent refusal will not heal by retrying this run: fail it so that someone looks.
        raise dg.Failure(
            f"the mail provider refused {len(alerts.failed)} late alert(s) permanently "
            f"(requests {', '.join(map(str, alerts.failed[:20]))}); {alerts.sent} were sent",
            allow_retries=False,
        )
    return dg.Output(
        alerts.sent, metadata={"alerts_sent": alerts.sent, "alerts_deferred": alerts.deferred}
    )


@dg.op(
    name="refresh_quota_windows",
    retry_policy=HOUSEKEEPING_RETRY,
    description=(
        "Re-derives backup_quota_windows (last counted backup, next allowed date) per "
        "subscription as a repair pass; reports how many it had to correct (0 when healthy)."
    ),
)
def refresh_quota_windows_op(
    context: dg.OpExecutionContext, config: AsOfConfig, platform_db: PlatformDatabaseResource
) -> dg.Output[int]:
    if (skipped := _skip_while_behind(context, platform_db)) is not None:
        return skipped
    repair = hk.refresh_quota_windows(platform_db.get_engine(), config.moment())
    context.log.info(
        f"{repair.written} quota window(s) re-derived; {repair.corrected} had to be corrected"
    )
    if repair.corrected:
        # Every change that counts updates its window in its own transaction: a correction means
        # something wrote backup_requests behind our back (or a bug): worth a look.
        context.log.warning(f"{repair.corrected} quota window(s) were stale")
    return dg.Output(
        repair.written,
        metadata={
            "subscriptions": repair.written,
            "windows_corrected": repair.corrected,
            "subscriptions_waiting_for_their_next_backup": repair.at_limit,
        },
    )


@dg.op(
    name="prune_backup_partitions",
    retry_policy=HOUSEKEEPING_RETRY,
    description=(
        "Deletes backup_requests partitions of finished requests older than the retention, and "
        "of requests that no longer exist; runs stay in the run history."
    ),
)
def prune_backup_partitions_op(
    context: dg.OpExecutionContext,
    config: AsOfConfig,
    platform_db: PlatformDatabaseResource,
    policy: BackupPolicyResource,
) -> dg.Output[int]:
    if (skipped := _skip_while_behind(context, platform_db)) is not None:
        return skipped
    instance = context.instance
    keys = instance.get_dynamic_partitions(backup_partitions.name)
    stale = hk.stale_partition_keys(
        platform_db.get_engine(), keys, policy.partition_retention, config.moment()
    )
    for key in stale[: policy.partition_delete_batch]:
        instance.delete_dynamic_partition(backup_partitions.name, key)
    deleted = min(len(stale), policy.partition_delete_batch)
    context.log.info(f"{deleted} of {len(keys)} partition(s) deleted")
    return dg.Output(
        deleted,
        metadata={
            "partitions_deleted": deleted,
            "partitions_left": len(keys) - deleted,
            "stale_left_for_next_run": len(stale) - deleted,
        },
    )


# --- Jobs ---------------------------------------------------------------------------------

archive_housekeeping_job = _housekeeping_job(
    "archive_housekeeping_job",
    "Deletes archives whose link expired (request -> expired) and staging left by failed runs.",
    [expire_archives_op, remove_staging_leftovers_op],
)
late_alerts_job = _housekeeping_job(
    "late_alerts_job",
    "Emails support once about each backup request still not delivered after the late threshold.",
    [alert_late_requests_op],
)
quota_windows_job = _housekeeping_job(
    "quota_windows_job",
    "Refreshes backup_quota_windows: each subscription's last counted backup and next allowed date.",
    [refresh_quota_windows_op],
)
partition_retention_job = _housekeeping_job(
    "partition_retention_job",
    "Keeps the backup_requests dynamic partitions far below Dagster's advised 100,000.",
    [prune_backup_partitions_op],
)


# --- Schedules ----------------------------------------------------------------------------


def tick_time(context: dg.ScheduleEvaluationContext) -> str:
    """The tick's scheduled time as naive UTC ISO (now, when evaluated by hand)."""
    scheduled = context.scheduled_execution_time
    moment = scheduled.astimezone(UTC).replace(tzinfo=None) if scheduled else utcnow()
    return moment.isoformat(timespec="seconds")


def _request(
    context: dg.ScheduleEvaluationContext, schedule: str, ops_judged_at_tick: list[str]
) -> dg.RunRequest:
    as_of = tick_time(context)
    return dg.RunRequest(
        run_key=f"{schedule}-{as_of}",
        run_config=dg.RunConfig(ops={op: AsOfConfig(as_of=as_of) for op in ops_judged_at_tick}),
    )


@dg.schedule(
    name="expire_archives",
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    job=archive_housekeeping_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Hourly: deletes the archive of every delivered request whose link has expired and marks "
        "it expired (at most BACKUP_EXPIRE_BATCH, 500 by default, per run, oldest first); "
        "deletes the staging objects "
        "of finished requests."
    ),
)
def expire_archives_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return _request(context, "expire_archives", ["expire_archives"])


@dg.schedule(
    name="alert_late_requests",
    cron_schedule="20 * * * *",
    execution_timezone="UTC",
    job=late_alerts_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Hourly: one email to support per request still pending, running or failed after the "
        "late threshold (BACKUP_LATE_AFTER_HOURS, 24 by default), remembered in backup_alerts."
    ),
)
def alert_late_requests_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return _request(context, "alert_late_requests", ["alert_late_requests"])


@dg.schedule(
    name="refresh_quota_windows",
    cron_schedule="40 3 * * *",
    execution_timezone="UTC",
    job=quota_windows_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Daily: rewrites backup_quota_windows (last counted backup, next allowed request, backups "
        "in the last 360 days) for every subscription with a request."
    ),
)
def refresh_quota_windows_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return _request(context, "refresh_quota_windows", ["refresh_quota_windows"])


@dg.schedule(
    name="prune_backup_partitions",
    cron_schedule="50 2 * * *",
    execution_timezone="UTC",
    job=partition_retention_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Daily: deletes the backup_requests partitions of finished requests older than "
        "BACKUP_PARTITION_RETENTION_DAYS (90 by default) and of requests that no longer exist."
    ),
)
def prune_backup_partitions_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return _request(context, "prune_backup_partitions", ["prune_backup_partitions"])


HOUSEKEEPING_SCHEDULES = [
    expire_archives_schedule,
    alert_late_requests_schedule,
    refresh_quota_windows_schedule,
    prune_backup_partitions_schedule,
]

HOUSEKEEPING_JOBS = [
    archive_housekeeping_job,
    late_alerts_job,
    quota_windows_job,
    partition_retention_job,
]
