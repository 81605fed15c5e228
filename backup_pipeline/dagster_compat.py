"""The only Dagster internals the product relies on (tag names Dagster writes, which its public
API cannot write for us), each with its reason; written out here rather than imported from
Dagster's private modules, and checked against dagster 1.13's own by
backup_pipeline_tests/job/test_cli_runs.py (equal to its private constants, and found by the UI's
own partition-status query). When an upgrade changes one, only this module changes, and that
test says so.
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
# Dagster's names: dagster._core.storage.tags and the singleton repository of a Definitions.
REPOSITORY_LABEL_TAG = ".dagster/repository"
CODE_LOCATION_TAG = "dagster/code_location"
SINGLETON_REPOSITORY_NAME = "__repository__"

# A partitioned job's runs are found by its "partition set" (the dagster/partition_set tag), a
# name Dagster derives from the job's; `execute_in_process(partition_key=...)` and the UI's
# Launchpad write it themselves, a run submitted through the GraphQL client (which takes tags but
# no partition) must carry it.
PARTITION_NAME_TAG = "dagster/partition"
PARTITION_SET_TAG = "dagster/partition_set"


def partition_set_name(job_name: str) -> str:
    """The partition set Dagster derives from a partitioned job's name."""
    return f"{job_name}_partition_set"


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
        PARTITION_SET_TAG: partition_set_name(job_name),
    }


def daemon_serves_run_queue(instance: dg.DagsterInstance) -> bool:
    """A daemon with a recent heartbeat dequeues this instance's runs (`dagster dev`, a
    deployment): runs are submitted to the deployment rather than executed here."""
    statuses = instance.get_daemon_statuses([RUN_QUEUE_DAEMON])
    return any(status.healthy for status in statuses.values())
