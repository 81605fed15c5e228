"""The embedded Dagster instance heals itself: a kill during its first start, a table missing, a
storage beyond repair; the next command simply works."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import cli
from backup_pipeline.instance import READY_MARKER, prepare_embedded_instance
from backup_pipeline.platform import create_schema, engine_for
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


# `backup-pipeline prepare-instance` in a child that kills itself (SIGKILL, as the OOM killer or
# a closed terminal would) at one point of the first start: the point is reached exactly, whatever
# the machine's pace, instead of a watcher racing the command. The hooks are public ones: the
# standard library's functions wrapped, SQLAlchemy's event on every engine.
KILLED_AT = """
import os, signal, sys, tempfile
from pathlib import Path
from sqlalchemy import event
from sqlalchemy.engine import Engine
from backup_pipeline import cli

point = sys.argv[1]
home = Path(os.environ["DAGSTER_HOME"]).resolve()
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

real_replace, real_mkdtemp = os.replace, tempfile.mkdtemp

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    moved = Path(dst).resolve()
    if point == "config_written" and moved == home / "dagster.yaml":
        die()  # the config in place, no storage yet
    if point == "storage_moved_in" and moved.parent == home and moved.name == "history":
        die()  # the first storage folder moved in, the others still in the scratch folder

def mkdtemp(*args, **kwargs):
    made = real_mkdtemp(*args, **kwargs)
    if point == "scratch_created" and Path(made).name.startswith(".instance-"):
        die()  # an empty scratch folder
    return made

tables = 0

@event.listens_for(Engine, "after_cursor_execute")
def after(conn, cursor, statement, parameters, context, executemany):
    global tables
    if point == "scratch_storage_started" and statement.lstrip().upper().startswith("CREATE TABLE"):
        tables += 1
        if tables == 3:
            die()  # Dagster's storage half made in the scratch folder

os.replace, tempfile.mkdtemp = replace, mkdtemp
sys.exit(cli.main(["prepare-instance"]))
"""

KILL_POINTS = ("config_written", "scratch_created", "scratch_storage_started", "storage_moved_in")


def _killed_at(home: Path, point: str) -> int:
    """Run `backup-pipeline prepare-instance` on `home` until it kills itself at `point`; its
    return code."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", KILLED_AT, point],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        timeout=300,
    ).returncode


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
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
    assert _killed_at(home, point) == -signal.SIGKILL
    assert not (home / READY_MARKER).exists()
    scratch = list(home.glob(".instance-*"))
    left = {  # what the kill left: the state the next command must heal
        "config_written": (home / "dagster.yaml").exists() and not scratch,
        "scratch_created": len(scratch) == 1 and not any(scratch[0].iterdir()),
        "scratch_storage_started": len(scratch) == 1 and (scratch[0] / "history").exists(),
        "storage_moved_in": (home / "history").exists() and len(scratch) == 1,
    }
    assert left[point]

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
