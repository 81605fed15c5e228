"""The embedded Dagster instance heals itself: a kill during its first start, a table missing, a
storage beyond repair; the next command simply works."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import cli
from backup_pipeline.instance import READY_MARKER, prepare_embedded_instance
from backup_pipeline.resources.platform_db import create_schema, engine_for
from backup_pipeline.resources.storage import open_store
from backup_pipeline.synthetic import file_backup_request, seed_platform

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "dagster.yaml"


def _works(home: Path) -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("backup_requests", ["1"])
        assert instance.get_dynamic_partitions("backup_requests") == ["1"]
        assert instance.get_runs(limit=1) == []


def test_a_new_instance_is_whole_and_marked(tmp_path: Path):
    home = tmp_path / "home"
    prepare_embedded_instance(home, TEMPLATE)
    assert (home / READY_MARKER).read_text() == dg.__version__
    assert (home / "dagster.yaml").read_text() == TEMPLATE.read_text()
    assert not list(home.glob(".instance-*"))  # the scratch folder is gone
    _works(home)


def test_a_missing_table_is_added_by_dagsters_own_migration(tmp_path: Path):
    home = tmp_path / "home"
    prepare_embedded_instance(home, TEMPLATE)
    # What a kill during the first start left: the event log's index without its dynamic
    # partitions table ("Using dynamic partitions definitions requires the dynamic partitions
    # table, which currently does not exist").
    with sqlite3.connect(home / "history" / "runs" / "index.db") as conn:
        conn.execute("DROP TABLE dynamic_partitions")
    (home / READY_MARKER).unlink()
    with (
        dg.DagsterInstance.from_config(str(home)) as broken,
        pytest.raises(Exception, match=r"dynamic.partitions"),
    ):
        broken.get_dynamic_partitions("backup_requests")

    prepare_embedded_instance(home, TEMPLATE)
    _works(home)


def test_a_storage_beyond_repair_is_moved_aside_not_deleted(tmp_path: Path):
    home = tmp_path / "home"
    prepare_embedded_instance(home, TEMPLATE)
    (home / "history" / "runs.db").write_bytes(b"not a database at all")
    (home / READY_MARKER).unlink()

    prepare_embedded_instance(home, TEMPLATE)
    _works(home)
    (aside,) = home.glob(".broken-*")
    assert (aside / "history" / "runs.db").read_bytes() == b"not a database at all"


def _kill_when(home: Path, reached: Callable[[Path], bool]) -> bool:
    """Start `backup-pipeline prepare-instance` on `home`; SIGKILL it the moment `reached` holds.
    False when the command finished before that."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    child = subprocess.Popen(
        [sys.executable, "-m", "backup_pipeline.cli", "prepare-instance"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if reached(home):
                child.send_signal(signal.SIGKILL)
                child.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


KILL_POINTS: dict[str, Callable[[Path], bool]] = {
    "config_written": lambda home: (home / "dagster.yaml").exists(),
    "scratch_created": lambda home: any(home.glob(".instance-*")),
    "scratch_storage_started": lambda home: any(home.glob(".instance-*/history")),
    "storage_moved_in": lambda home: (home / "history").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_kill_during_the_first_start_is_repaired_by_running_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
):
    var = tmp_path / "var"
    home = var / "dagster_home"
    for name, value in {
        "BACKUP_VAR_DIR": str(var),
        "DAGSTER_HOME": str(home),
        "BACKUP_PLATFORM_DB_URL": f"sqlite:///{var / 'platform.db'}",
    }.items():
        monkeypatch.setenv(name, value)
    (var / "files").mkdir(parents=True)
    killed = _kill_when(home, KILL_POINTS[point])
    if not killed or (home / READY_MARKER).exists():
        pytest.skip(f"the command finished before it could be killed at {point}")

    engine = engine_for(f"sqlite:///{var / 'platform.db'}")
    create_schema(engine)
    summary = seed_platform(engine, open_store((var / "files").as_uri()), profile="small")
    subscription_id = summary.subscription_ids[0]
    file_backup_request(
        engine, subscription_id=subscription_id, user_id=summary.user_ids[subscription_id][0]
    )
    assert cli.main(["process"]) == 0
    assert (home / READY_MARKER).exists()
    assert list((var / "archives").rglob("*.zip"))


def test_an_instance_prepared_with_an_older_config_gets_the_current_one(tmp_path: Path):
    # A DAGSTER_HOME made before run monitoring and the backups' share of the queue existed.
    home = tmp_path / "home"
    home.mkdir()
    first_line = TEMPLATE.read_text().splitlines()[0]
    older = f"{first_line}\nconcurrency:\n  runs:\n    max_concurrent_runs: 2\n"
    (home / "dagster.yaml").write_text(older)

    prepare_embedded_instance(home, TEMPLATE)

    assert (home / "dagster.yaml").read_text() == TEMPLATE.read_text()
    assert (home / "dagster.yaml.previous").read_text() == older
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0


def test_an_operators_own_instance_config_is_left_as_it_is(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    own = "# our team's instance\ntelemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(own)

    prepare_embedded_instance(home, TEMPLATE)

    assert (home / "dagster.yaml").read_text() == own
    assert not (home / "dagster.yaml.previous").exists()
