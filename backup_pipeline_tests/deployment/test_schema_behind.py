"""Deployed before `backup-pipeline migrate`: the sensor, the schedules, the job and the CLI touch no
request and say what to run, on a platform database built from schema.sql alone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, create_engine, insert, select

from backup_pipeline import cli
from backup_pipeline.definitions import build_definitions
from backup_pipeline.platform import migrations, utcnow
from backup_pipeline.platform import tables as t
from backup_pipeline.resources import BackupPolicyResource, build_resources
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.rules.target import run_tags
from backup_pipeline.services import housekeeping
from backup_pipeline.settings import Settings
from backup_pipeline.storage import PARTIAL_SUFFIX
from backup_pipeline.storage.folder import FolderStore

SHARED_SCHEMA_SQL = Path(__file__).resolve().parents[3] / "shared" / "platform" / "schema.sql"
COPIED_SCHEMA_SQL = Path(__file__).resolve().parents[1] / "data" / "platform_schema.sql"
MIGRATE_HINT = "run `backup-pipeline migrate`"


@pytest.fixture
def platform_only(db_url: str) -> Iterator[tuple[str, Engine]]:
    """The platform as it exists (schema.sql as it is), with one clinic and a pending request."""
    source = SHARED_SCHEMA_SQL if SHARED_SCHEMA_SQL.exists() else COPIED_SCHEMA_SQL
    engine = create_engine(db_url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.connection.driver_connection.executescript(source.read_text(encoding="utf-8"))
        else:
            conn.exec_driver_sql(source.read_text(encoding="utf-8"))
        now = datetime(2026, 11, 1, 12, 0)
        conn.execute(
            insert(t.subscriptions).values(id=1, name="Clínica", status="active", created_at=now)
        )
        conn.execute(
            insert(t.users).values(
                id=101,
                subscription_id=1,
                email="duena@clinica.example",
                full_name="Dueña",
                role="owner",
                is_active=True,
                can_request_backup=True,
                created_at=now,
            )
        )
        conn.execute(
            insert(t.backup_requests).values(
                id=7,
                subscription_id=1,
                requested_by_user_id=101,
                requested_at=now,
                status="pending",
            )
        )
    yield db_url, engine
    engine.dispose()


def _status(engine: Engine) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            select(t.backup_requests.c.status, t.backup_requests.c.status_detail)
        ).one()
    return row.status, row.status_detail


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings.from_env({"BACKUP_VAR_DIR": str(tmp_path), "BACKUP_PLATFORM_DB_URL": url})


def test_the_request_sensor_skips_and_says_to_migrate(platform_only, tmp_path: Path):
    url, engine = platform_only
    defs = build_definitions(_settings(tmp_path, url))
    sensor = defs.resolve_sensor_def("backup_request_sensor")
    resources = {"platform_db": PlatformDatabaseResource(url=url), "policy": BackupPolicyResource()}
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert not result.run_requests
    assert MIGRATE_HINT in str(result.skip_reason)
    assert _status(engine) == ("pending", None)

    migrations.upgrade(engine)
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert [r.partition_key for r in result.run_requests] == ["7"]


def test_every_housekeeping_job_does_nothing_and_says_so(platform_only, tmp_path: Path):
    url, engine = platform_only
    settings = _settings(tmp_path, url)
    for folder in ("files", "archives", "outbox"):
        (tmp_path / folder).mkdir()
    defs = build_definitions(settings)
    for schedule in defs.schedules:
        job = defs.resolve_job_def(schedule.job_name)
        result = job.execute_in_process(resources=build_resources(settings))
        assert result.success
        for node in job.graph.node_defs:
            events = result.events_for_node(node.name)
            outputs = [e for e in events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
            (output,) = outputs
            skipped = output.step_output_data.metadata["skipped"].value
            assert MIGRATE_HINT in skipped
    assert _status(engine) == ("pending", None)


def test_a_run_started_by_hand_fails_without_failing_its_request(platform_only, tmp_path: Path):
    url, engine = platform_only
    settings = _settings(tmp_path, url)
    for folder in ("files", "archives", "outbox"):
        (tmp_path / folder).mkdir()
    defs = build_definitions(settings)
    resources = build_resources(settings)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("backup_requests", ["7"])
        result = defs.resolve_job_def("backup_job").execute_in_process(
            instance=instance,
            partition_key="7",
            tags=run_tags(7, 1),
            resources=resources,
            raise_on_error=False,
        )
        assert not result.success
        (failure,) = result.get_step_failure_events()
        assert MIGRATE_HINT in failure.event_specific_data.error.message
        sensor = defs.resolve_sensor_def("backup_failure_sensor")
        sensor(
            dg.build_run_status_sensor_context(
                sensor_name=sensor.name,
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                dagster_event=result.get_run_failure_event(),
                resources=resources,
            )
        )
    # Nobody was told it failed, and it still counts as waiting: it runs after the migration.
    assert _status(engine) == ("pending", None)
    assert not list((tmp_path / "outbox").glob("*.eml"))


@pytest.mark.parametrize("command", [["process"], ["run", "7"]])
def test_the_cli_refuses_and_names_the_command_to_run(
    platform_only, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, command: list[str]
):
    url, engine = platform_only
    monkeypatch.setenv("BACKUP_PLATFORM_DB_URL", url)
    monkeypatch.setenv("BACKUP_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert cli.main(command) == 2
    assert MIGRATE_HINT in capsys.readouterr().err
    assert _status(engine) == ("pending", None)


def test_abandoned_partial_writes_are_removed_and_live_ones_kept(tmp_path: Path):
    store = FolderStore(tmp_path)
    store.put_bytes("respaldos/1/7/respaldo.zip", b"zip")
    folder = tmp_path / "respaldos" / "1" / "7"
    abandoned = folder / f".abc{PARTIAL_SUFFIX}"
    live = folder / f".def{PARTIAL_SUFFIX}"
    abandoned.write_bytes(b"half a zip")
    live.write_bytes(b"being written")
    day_ago = time.time() - 24 * 3600
    os.utime(abandoned, (day_ago, day_ago))

    assert housekeeping.remove_abandoned_writes(store, utcnow()) == 1
    assert not abandoned.exists()
    assert live.exists()
    assert store.get_bytes("respaldos/1/7/respaldo.zip") == b"zip"
    # A second pass finds nothing more to do.
    assert housekeeping.remove_abandoned_writes(store, utcnow()) == 0
