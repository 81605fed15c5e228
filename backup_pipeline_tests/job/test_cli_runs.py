"""Runs the CLI starts are runs of the code location: with a daemon they go through the run queue
(its limits: one backup per clinic), without one they still carry the location's origin, so the
UI's partition status counts them."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import operations
from backup_pipeline.target import SUBSCRIPTION_TAG, run_tags
from backup_pipeline_tests.guarantees.test_load import dequeue
from backup_pipeline_tests.support.dagster_internals import DaemonHeartbeat
from backup_pipeline_tests.support.platform import Clinic, Platform

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clinic(platform: Platform) -> Clinic:
    (seeded,) = platform.seed(patients=4, seed=5)
    return seeded


def test_an_in_process_run_counts_in_the_ui_partition_status(platform, clinic):
    backup = platform.back_up(clinic)
    assert backup.delivered
    # The query the UI's Partitions page makes (its tags filter).
    partitions = platform.instance.get_run_partition_data(
        dg.RunsFilter(tags=operations.origin_tags())
    )
    assert [(p.partition, p.status) for p in partitions] == [
        (str(backup.request_id), dg.DagsterRunStatus.SUCCESS)
    ]


def test_with_a_daemon_the_cli_submits_to_the_queue_which_holds_a_second_run_of_a_clinic(
    platform, clinic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in platform.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)  # where workspace.yaml names the code location
    with dg.DagsterInstance.get() as instance:
        assert not operations.queue_is_served(instance)
        instance.add_daemon_heartbeat(
            DaemonHeartbeat(time.time(), "QUEUED_RUN_COORDINATOR", "test-daemon")
        )
        assert operations.queue_is_served(instance)

        request_id = platform.file_request(clinic)
        run_id = operations.submit_to_queue(request_id, clinic.subscription_id)

        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.QUEUED  # waiting for the daemon, not run here
        assert run.tags[SUBSCRIPTION_TAG] == str(clinic.subscription_id)
        assert run.tags["dagster/partition"] == str(request_id)
        # From the code location, as the UI filters runs by it.
        located = instance.get_runs(
            dg.RunsFilter(tags={".dagster/repository": "__repository__@backup_pipeline"})
        )
        assert [r.run_id for r in located] == [run_id]
    # Another backup of the same clinic is running: the queue's own rule holds this one back.
    running = run_tags(request_id - 1, clinic.subscription_id)
    assert dequeue([running, dict(run.tags)], REPO / "dagster.yaml") == [running]
