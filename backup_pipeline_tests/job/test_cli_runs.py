"""Runs the CLI starts are runs of the code location: with a daemon they are submitted through the
deployment's webserver into the run queue (its limits: one backup per clinic), without one they
run in the CLI's process and still count in the UI's partition status.

The webserver here is a real `dagster-webserver` on the test's instance, and the questions are
the UI's own GraphQL queries: so these tests also fail the day Dagster stops writing, or reading,
what backup_pipeline/dagster_compat.py assumes.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import dagster_compat, operations
from backup_pipeline.instance import prepare_embedded_instance
from backup_pipeline.jobs import BACKUP_JOB_NAME
from backup_pipeline.operations import CODE_LOCATION, Launch, NotLaunched
from backup_pipeline.rules.target import SUBSCRIPTION_TAG, run_tags
from backup_pipeline_tests.guarantees.test_load import dequeue
from backup_pipeline_tests.support import dagster_internals
from backup_pipeline_tests.support.dagster_internals import DaemonHeartbeat
from backup_pipeline_tests.support.platform import Clinic, Platform
from backup_pipeline_tests.support.webserver import dagster_webserver, free_port, graphql

REPO = Path(__file__).resolve().parents[2]

# The question the UI's Partitions page asks about a partitioned job's runs.
PARTITION_STATUSES = """
query ($repositorySelector: RepositorySelector!, $partitionSetName: String!) {
  partitionSetOrError(repositorySelector: $repositorySelector, partitionSetName: $partitionSetName) {
    __typename
    ... on PartitionSet {
      partitionStatusesOrError {
        __typename
        ... on PartitionStatuses { results { partitionName runId runStatus } }
      }
    }
  }
}
"""


@pytest.fixture
def clinic(platform: Platform) -> Clinic:
    (seeded,) = platform.seed(patients=4, seed=5)
    return seeded


@pytest.fixture
def dagster_home(platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's embedded instance (the repository's dagster.yaml: its run queue) on a test
    folder, and the support engineer's environment naming it and the platform."""
    home = prepare_embedded_instance(tmp_path / "dagster_home", REPO / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in platform.env.items():
        monkeypatch.setenv(name, value)
    return home


def a_daemon_serves(instance: dg.DagsterInstance) -> None:
    """The heartbeat `dagster-daemon run` writes for its run queue thread, without starting a
    daemon (which would also launch the queued runs and run every sensor)."""
    instance.add_daemon_heartbeat(
        DaemonHeartbeat(time.time(), dagster_compat.RUN_QUEUE_DAEMON, "test-daemon")
    )


def partition_statuses(url: str) -> dict[str, tuple[str, str]]:
    """{partition: (run id, run status)} as the UI's Partitions page shows the backup job."""
    data = graphql(
        url,
        PARTITION_STATUSES,
        {
            "repositorySelector": {
                "repositoryLocationName": CODE_LOCATION,
                "repositoryName": "__repository__",
            },
            "partitionSetName": f"{BACKUP_JOB_NAME}_partition_set",
        },
    )
    statuses = data["partitionSetOrError"]["partitionStatusesOrError"]
    assert statuses["__typename"] == "PartitionStatuses", statuses
    return {
        row["partitionName"]: (row["runId"], row["runStatus"])
        for row in statuses["results"]
        if row["runId"]
    }


def test_an_in_process_run_carries_the_origin_the_ui_partition_status_filters_by(platform, clinic):
    backup = platform.back_up(clinic)
    assert backup.delivered
    # The filter the UI's Partitions page gives run storage (partition set and repository label).
    partitions = platform.instance.get_run_partition_data(
        dg.RunsFilter(
            tags={
                **dagster_compat.code_location_tags(CODE_LOCATION),
                "dagster/partition_set": f"{BACKUP_JOB_NAME}_partition_set",
            }
        )
    )
    assert [(p.partition, p.status) for p in partitions] == [
        (str(backup.request_id), dg.DagsterRunStatus.SUCCESS)
    ]


def test_with_a_daemon_but_no_webserver_nothing_is_launched_and_no_request_touched(
    platform, clinic, dagster_home
):
    request_id = platform.file_request(clinic)
    with dg.DagsterInstance.get() as instance:
        a_daemon_serves(instance)
    nobody = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(NotLaunched, match=f"no Dagster webserver answers at {nobody}"):
        operations.process_pending(launch=Launch(dagster_url=nobody))

    assert platform.request(request_id).status == "pending"
    assert platform.reviews_count() == 0  # not even reviewed: the sensor will, when it runs
    with dg.DagsterInstance.get() as instance:
        assert not instance.get_runs()


@pytest.mark.slow
def test_through_the_webserver_cli_runs_are_the_code_locations_runs(platform, dagster_home):
    clinic, other, third = platform.seed(patients=2, subscriptions=3, seed=6)
    with dg.DagsterInstance.get() as instance:
        # No daemon: the backup runs in this process.
        delivered = platform.back_up(clinic, instance=instance)
        assert delivered.delivered
        with dagster_webserver({"DAGSTER_HOME": str(dagster_home), **platform.env}) as url:
            # The UI counts it in the request's partition, green.
            assert partition_statuses(url) == {
                str(delivered.request_id): (delivered.outcome.run_id, "SUCCESS")
            }

            # A daemon serves the instance: `run` submits through the webserver, into the queue.
            request_id = platform.file_request(other)
            a_daemon_serves(instance)
            assert dagster_compat.daemon_serves_run_queue(instance)
            submitted: list[dg.DagsterRun] = []

            def seen_queued_then_cancelled(run_id: str) -> None:
                submitted.append(instance.get_run_by_id(run_id))
                # The UI shows it in the request's partition (its partition tags are Dagster's).
                assert partition_statuses(url)[str(request_id)] == (run_id, "QUEUED")
                # Support cancels it in the UI before the (absent) daemon dequeues it.
                operations.deployment_client(instance, Launch(dagster_url=url)).terminate_run(
                    run_id
                )

            outcome = operations.run_request(
                request_id, launch=Launch(dagster_url=url, on_submitted=seen_queued_then_cancelled)
            )

            (queued,) = submitted
            assert queued.status == dg.DagsterRunStatus.QUEUED  # waiting for the daemon
            assert queued.tags[SUBSCRIPTION_TAG] == str(other.subscription_id)
            # Dagster itself stored the origin of the run launched from the location: the tags
            # dagster_compat gives an in-process run find both alike.
            located = instance.get_runs(
                dg.RunsFilter(tags=dagster_compat.code_location_tags(CODE_LOCATION))
            )
            assert {r.run_id for r in located} == {queued.run_id, delivered.outcome.run_id}
            # The CLI waited for the run's end and reports it; no failure sensor ran here.
            (run,) = outcome.runs
            assert (run.run_id, run.success, run.run_status) == (queued.run_id, False, "CANCELED")
            assert run.request_status == "pending"

            # Support's commands are submitted as runs of support's jobs, configured as the
            # Launchpad would configure them.
            submitted.clear()

            def cancelled(run_id: str) -> None:
                submitted.append(instance.get_run_by_id(run_id))
                operations.deployment_client(instance, Launch(dagster_url=url)).terminate_run(
                    run_id
                )

            with pytest.raises(NotLaunched, match=r"refuse_request_job run .* was cancelled"):
                operations.refuse_request(
                    request_id, "duplicate", launch=Launch(dagster_url=url, on_submitted=cancelled)
                )
            (support,) = submitted
            assert (support.job_name, support.status.value) == ("refuse_request_job", "QUEUED")
            assert support.run_config == {  # the Launchpad's fields, at the root
                "request_id": request_id,
                "reason": "duplicate",
                "message_to_clinic": "",
            }
            assert platform.request(request_id).status == "pending"

            # `process` reviews the pending requests, then submits each accepted one the same way.
            submitted.clear()
            third_request = platform.file_request(third)

            processed = operations.process_pending(
                launch=Launch(dagster_url=url, on_submitted=cancelled)
            )

            # The other clinic's request, still pending (its run was cancelled), is reviewed too.
            assert sorted((r.request_id, r.run_id, r.run_status) for r in processed.runs) == sorted(
                (int(run.tags["dagster/partition"]), run.run_id, "CANCELED") for run in submitted
            )
            assert {r.request_id for r in processed.runs} == {request_id, third_request}
    # Another backup of the same clinic is running: the queue's own rule holds this one back.
    running = run_tags(request_id - 1, other.subscription_id)
    assert dequeue([running, dict(queued.tags)], REPO / "dagster.yaml") == [running]


def test_the_tags_dagster_compat_writes_are_still_dagsters_own():
    # dagster_compat writes Dagster's internal names out instead of importing them (the product
    # uses no private name of a library): this fails the day Dagster renames one.
    assert dagster_compat.REPOSITORY_LABEL_TAG == dagster_internals.REPOSITORY_LABEL_TAG
    assert dagster_compat.CODE_LOCATION_TAG == dagster_internals.CODE_LOCATION_TAG
    assert dagster_compat.PARTITION_NAME_TAG == dagster_internals.PARTITION_NAME_TAG
    assert dagster_compat.PARTITION_SET_TAG == dagster_internals.PARTITION_SET_TAG
    assert dagster_compat.SINGLETON_REPOSITORY_NAME == dagster_internals.SINGLETON_REPOSITORY_NAME
    assert dagster_compat.partition_set_name(
        BACKUP_JOB_NAME
    ) == dagster_internals.partition_set_snap_name_for_job_name(BACKUP_JOB_NAME)
