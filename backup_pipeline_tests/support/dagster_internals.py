"""The only private Dagster names the tests use, each for a check Dagster's public API cannot make.

Checked against dagster 1.13: `dagster` exports none of these, nor anything that does their job.
When an upgrade moves one, only this module changes.
"""

from __future__ import annotations

# Validating a dagster.yaml without creating the instance it describes: Dagster checks the file
# only inside DagsterInstance.from_config/from_ref, which for deploy/dagster.yaml would connect to
# PostgreSQL and Kubernetes. test_schedules checks each config (and each pluggable class's own
# config) so that a misspelled key fails in CI rather than in a pod at deploy time.
from dagster._config import validate_config

# The tag names and the partition-set name Dagster writes on a code location's runs, which
# backup_pipeline/dagster_compat.py writes out for a run the CLI executes in process:
# test_cli_runs checks that they are still Dagster's.
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.instance.config import dagster_instance_config

# What the webserver is sent about a code location (jobs, sensors, resources and their config):
# test_privacy serializes it to show that no secret reaches the UI. Dagster has no public way to
# build this snapshot from Definitions.
from dagster._core.remote_representation.external_data import (
    RepositorySnap,
    partition_set_snap_name_for_job_name,
)
from dagster._core.storage.tags import (
    CODE_LOCATION_TAG,
    PARTITION_NAME_TAG,
    PARTITION_SET_TAG,
    REPOSITORY_LABEL_TAG,
)

# A daemon's heartbeat, as `dagster-daemon run` writes it: test_cli_runs tells the CLI that a
# daemon serves the run queue without starting one (which would also run every sensor).
from dagster._daemon.types import DaemonHeartbeat

# The rule the QueuedRunCoordinatorDaemon applies to tag_concurrency_limits: test_load runs the
# instance's run-queue config through it, and test_kill asks it whether a dead run still holds
# the queue, since the daemon itself has no public entry point.
from dagster._utils.tags import TagConcurrencyLimitsCounter

__all__ = [
    "CODE_LOCATION_TAG",
    "PARTITION_NAME_TAG",
    "PARTITION_SET_TAG",
    "REPOSITORY_LABEL_TAG",
    "SINGLETON_REPOSITORY_NAME",
    "DaemonHeartbeat",
    "RepositorySnap",
    "TagConcurrencyLimitsCounter",
    "dagster_instance_config",
    "partition_set_snap_name_for_job_name",
    "validate_config",
]
