"""The code location as Dagster loads it, built from Settings.from_env() like `defs` is: tests
configure it through the environment (conftest.py sets a short retry delay), the public path."""

from __future__ import annotations

import dagster as dg

from backup_pipeline.definitions import build_definitions
from backup_pipeline.settings import Settings


def code_location(settings: Settings | None = None) -> dg.Definitions:
    return build_definitions(settings or Settings.from_env())


_LOCATION = code_location()
backup_job = _LOCATION.resolve_job_def("backup_job")
backup_request_sensor = _LOCATION.resolve_sensor_def("backup_request_sensor")
backup_failure_sensor = _LOCATION.resolve_sensor_def("backup_failure_sensor")
backup_canceled_sensor = _LOCATION.resolve_sensor_def("backup_canceled_sensor")
