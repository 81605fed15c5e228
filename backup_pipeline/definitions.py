"""The code location: the backup job, its sensors and schedules, and resources from the environment."""

from __future__ import annotations

import dagster as dg

from backup_pipeline.jobs import backup_job
from backup_pipeline.resources import build_resources
from backup_pipeline.schedules import HOUSEKEEPING_SCHEDULES
from backup_pipeline.sensors import (
    backup_canceled_sensor,
    backup_failure_sensor,
    backup_request_sensor,
)
from backup_pipeline.settings import Settings

defs = dg.Definitions(
    jobs=[backup_job],
    sensors=[backup_request_sensor, backup_failure_sensor, backup_canceled_sensor],
    schedules=HOUSEKEEPING_SCHEDULES,
    resources=build_resources(Settings.from_env()),
)
