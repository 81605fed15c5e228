"""The code location: the backup job, its sensors and schedules, and resources, built from one
Settings (read from the environment when Dagster loads the location, not at import)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

from backup_pipeline.jobs import build_backup_job
from backup_pipeline.resources import build_resources
from backup_pipeline.schedules import HOUSEKEEPING_JOBS, HOUSEKEEPING_SCHEDULES
from backup_pipeline.sensors import build_sensors
from backup_pipeline.settings import Settings
from backup_pipeline.support_jobs import SUPPORT_JOBS


def transient_retry(max_retries: int, delay_seconds: float) -> dg.RetryPolicy:
    """Storage 5xx, timeouts and dropped connections heal on their own; permanent errors raise
    dg.Failure(allow_retries=False) instead, so nothing is retried forever."""
    return dg.RetryPolicy(
        max_retries=max_retries,
        delay=delay_seconds,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def fixed_resources(resources: Mapping[str, dg.ConfigurableResource]) -> dict[str, Any]:
    """The resources as the code location binds them: built from the settings, and closed to
    run config. A ConfigurableResource bound as it is shows its fields, filled in, on every
    job's Launchpad, where one run could send a clinic's archive to another bucket or its mail
    elsewhere; bound like this, its run config is empty and anything else is refused."""
    return {key: _closed(resource) for key, resource in resources.items()}


def _closed(resource: dg.ConfigurableResource) -> dg.ResourceDefinition:
    return dg.ResourceDefinition(
        resource_fn=lambda _context: resource,
        config_schema={},
        description=type(resource).__doc__,
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every job, sensor, schedule and resource of the code location for these settings."""
    backup_job = build_backup_job(
        transient_retry(settings.op_max_retries, settings.retry_delay_seconds)
    )
    defs = dg.Definitions(
        jobs=[backup_job, *HOUSEKEEPING_JOBS, *SUPPORT_JOBS],
        sensors=build_sensors(backup_job, settings.sensor_interval_seconds),
        schedules=HOUSEKEEPING_SCHEDULES,
        resources=fixed_resources(build_resources(settings)),
    )
    with warnings.catch_warnings():
        # Resolved once here (Definitions caches it): binding resources to the run-status
        # sensors passes Dagster's own beta `owners` parameter, and Dagster warns about it to
        # whoever runs a command. Not ours to act on.
        warnings.simplefilter("ignore", dg.BetaWarning)
        defs.get_repository_def()
    return defs


@dg.definitions
def defs() -> dg.Definitions:
    # A bad setting raises SettingsError here: Dagster shows the location's load error, whose
    # message is the one line naming the variable, and nothing of the location runs.
    return build_definitions(Settings.from_env())
