"""The only private Dagster names the product uses, each for something Dagster's public API
cannot do; checked against dagster 1.13 by backup_pipeline_tests/job/test_cli_runs.py.

When an upgrade moves or changes one, only this module changes, and that test says so.
"""

from __future__ import annotations

import dagster as dg

# A run launched from a code location (the UI, a sensor, the GraphQL API) gets a "remote job
# origin", and Dagster stores two tags from it: the hidden repository label, which the UI's
# Partitions page filters a partitioned job's runs by (with dagster/partition_set), and the code
# location, which the Runs page filters by. A run the CLI executes in its own process
# (`JobDefinition.execute_in_process`, the documented in-process execution; `execute_job` with a
# reconstructable job makes no origin either) has none, so without these tags the UI would not
# count it in the request's partition. Dagster offers no public way to give an in-process run its
# code location's origin.
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME

# A partitioned job's runs are found by its "partition set" (the dagster/partition_set tag), a
# name Dagster derives from the job's; `execute_in_process(partition_key=...)` and the UI's
# Launchpad write it themselves, a run submitted through the GraphQL client (which takes tags but
# no partition) must carry it.
from dagster._core.remote_representation.external_data import partition_set_snap_name_for_job_name
from dagster._core.storage.tags import (
    CODE_LOCATION_TAG,
    PARTITION_NAME_TAG,
    PARTITION_SET_TAG,
    REPOSITORY_LABEL_TAG,
)

# The daemon that dequeues the instance's runs (QueuedRunCoordinatorDaemon), by the type its
# heartbeat carries. `DagsterInstance.get_daemon_statuses` reads the heartbeats the UI's Daemons
# tab shows; it has no underscore but is not in Dagster's API reference.
RUN_QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"


def code_location_tags(location_name: str) -> dict[str, str]:
    """The origin tags Dagster writes on a run launched from the code location `location_name`
    (a `Definitions` location has one repository, Dagster's singleton)."""
    return {
        REPOSITORY_LABEL_TAG: f"{SINGLETON_REPOSITORY_NAME}@{location_name}",
        CODE_LOCATION_TAG: location_name,
    }


def partition_tags(job_name: str, partition_key: str) -> dict[str, str]:
    """The tags that make a run of `job_name` the run of one partition, as Dagster writes them."""
    return {
        PARTITION_NAME_TAG: partition_key,
        PARTITION_SET_TAG: partition_set_snap_name_for_job_name(job_name),
    }


def daemon_serves_run_queue(instance: dg.DagsterInstance) -> bool:
    """A daemon with a recent heartbeat dequeues this instance's runs (`dagster dev`, a
    deployment): runs are submitted to the deployment rather than executed here."""
    statuses = instance.get_daemon_statuses([RUN_QUEUE_DAEMON])
    return any(status.healthy for status in statuses.values())
