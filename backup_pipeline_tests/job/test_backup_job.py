"""One backup end to end: a pending request becomes a zip in the archives store and one email."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import platform as db
from backup_pipeline.operations import execute_request
from backup_pipeline.rules.target import REQUEST_TAG, SUBSCRIPTION_TAG
from backup_pipeline_tests.support.location import (
    backup_job,
    backup_request_sensor,
    code_location,
)
from backup_pipeline_tests.support.platform import (
    EVERY_DATABASE,
    WORKBOOKS,
    Backends,
    Clinic,
    Platform,
)


@pytest.fixture(params=EVERY_DATABASE)
def backends(request: pytest.FixtureRequest) -> Backends:
    """Every test here once on SQLite and once on PostgreSQL."""
    return request.param


@pytest.fixture
def clinic(platform: Platform) -> Clinic:
    (seeded,) = platform.seed(patients=12, seed=7)
    return seeded


def test_dagster_loads_the_code_location_as_declared_in_pyproject(tmp_path: Path):
    # As `dagster dev` and the code server load it: the module's lazy `defs`, from the environment
    # (with an instance of its own: the Makefile's DAGSTER_HOME may not exist on a fresh clone).
    home = tmp_path / "dagster_home"
    home.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "backup_pipeline.definitions",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DAGSTER_HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Validation successful" in done.stdout + done.stderr


def test_definitions_load_and_resolve_every_job():
    defs = code_location()
    for job in defs.resolve_all_job_defs():
        assert job.name
    assert defs.resolve_job_def("backup_job").partitions_def is not None
    sensor_names = {s.name for s in defs.sensors}
    assert {"backup_request_sensor", "backup_failure_sensor"} <= sensor_names


def test_sensor_turns_a_pending_request_into_one_tagged_run(platform: Platform, clinic: Clinic):
    request_id = platform.file_request(clinic)
    resources = platform.resources()
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources)
        result = backup_request_sensor(context)
        assert [r.partition_key for r in result.run_requests] == [str(request_id)]
        run = result.run_requests[0]
        assert run.run_key == f"backup-request-{request_id}"
        assert run.tags == {
            REQUEST_TAG: str(request_id),
            SUBSCRIPTION_TAG: str(clinic.subscription_id),
        }
        (add,) = result.dynamic_partitions_requests
        assert add.partitions_def_name == "backup_requests"
        assert list(add.partition_keys) == [str(request_id)]
        # A second tick does not review (or launch) the same request again.
        again = backup_request_sensor(
            dg.build_sensor_context(instance=instance, resources=resources)
        )
        assert not again.run_requests


def test_job_delivers_the_request_with_every_column_filled(platform: Platform, clinic: Clinic):
    request_id = platform.file_request(clinic)
    resources = platform.resources()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("backup_requests", [str(request_id)])
        result = backup_job.execute_in_process(
            instance=instance, partition_key=str(request_id), resources=resources
        )
        assert result.success

    with platform.engine.connect() as conn:
        row = db.get_request(conn, request_id)
    assert row.status == "delivered"
    assert row.run_id == result.run_id
    assert row.started_at is not None and row.finished_at >= row.started_at
    assert row.archive_key.startswith(f"respaldos/{clinic.subscription_id}/{request_id}/respaldo_")
    assert row.archive_key.endswith(".zip")
    assert row.link_expires_at > row.finished_at
    assert row.email_sent_at is not None and row.email_message_id

    data = platform.archives.get_bytes(row.archive_key)
    assert len(data) == row.archive_size_bytes
    assert hashlib.sha256(data).hexdigest() == row.archive_sha256
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
    for expected in ("LEEME.txt", "SHA256SUMS", *WORKBOOKS):
        assert expected in names
    assert any(n.startswith("adjuntos/") for n in names)
    assert any(n.startswith("facturacion/ingresos/xml/") for n in names)
    # Staging is cleaned once delivered.
    assert not list(platform.archives.list("staging/"))

    (eml,) = sorted(platform.outbox.glob("*.eml"))
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()
    assert Path(row.archive_key).name in text or "file://" in text
    assert row.archive_sha256 in text


def test_rerunning_a_delivered_request_sends_no_second_email(platform: Platform, clinic: Clinic):
    request_id = platform.file_request(clinic)
    resources = platform.resources()
    with dg.instance_for_test() as instance:
        first = execute_request(instance, resources, request_id, clinic.subscription_id)
        second = execute_request(instance, resources, request_id, clinic.subscription_id)
    assert first.success and first.request_status == "delivered"
    # Nothing to do (the request is already delivered): a success, so its partition stays green.
    assert second.success
    assert second.request_status == "delivered"
    assert len(list(platform.outbox.glob("*.eml"))) == 1
