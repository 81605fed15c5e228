"""One backup end to end: a pending request becomes a zip in the archives store and one email."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, create_engine

from backup_pipeline.definitions import defs
from backup_pipeline.jobs import REQUEST_TAG, SUBSCRIPTION_TAG, backup_job
from backup_pipeline.operations import execute_request
from backup_pipeline.resources import build_resources
from backup_pipeline.resources import platform_db as db
from backup_pipeline.resources.platform_db import create_schema
from backup_pipeline.resources.storage import open_store
from backup_pipeline.sensors import backup_request_sensor
from backup_pipeline.settings import Settings
from backup_pipeline.storage import ObjectStore
from backup_pipeline.synthetic import file_backup_request, seed_platform


@dataclass
class Platform:
    engine: Engine
    settings: Settings
    files: ObjectStore
    archives: ObjectStore
    subscription_id: int
    user_id: int
    outbox: Path


@pytest.fixture
def platform(tmp_path: Path, db_url: str) -> Platform:
    engine = create_engine(db_url)
    create_schema(engine)
    settings = Settings.from_env(
        {
            "BACKUP_PLATFORM_DB_URL": db_url,
            "BACKUP_FILES_URL": (tmp_path / "files").as_uri(),
            "BACKUP_ARCHIVES_URL": (tmp_path / "archives").as_uri(),
            "BACKUP_MAIL_URL": (tmp_path / "outbox").as_uri(),
        }
    )
    files = open_store(settings.files_url)
    summary = seed_platform(engine, files, profile="small", patients=12, seed=7)
    sid = summary.subscription_ids[0]
    yield Platform(
        engine=engine,
        settings=settings,
        files=files,
        archives=open_store(settings.archives_url),
        subscription_id=sid,
        user_id=summary.user_ids[sid][0],
        outbox=tmp_path / "outbox",
    )
    engine.dispose()


def test_definitions_load_and_resolve_every_job():
    for job in defs.resolve_all_job_defs():
        assert job.name
    assert defs.resolve_job_def("backup_job").partitions_def is not None
    sensor_names = {s.name for s in defs.sensors}
    assert {"backup_request_sensor", "backup_failure_sensor"} <= sensor_names


def test_sensor_turns_a_pending_request_into_one_tagged_run(platform: Platform):
    request_id = file_backup_request(
        platform.engine, subscription_id=platform.subscription_id, user_id=platform.user_id
    )
    resources = build_resources(platform.settings)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources)
        result = backup_request_sensor(context)
        assert [r.partition_key for r in result.run_requests] == [str(request_id)]
        run = result.run_requests[0]
        assert run.run_key == f"backup-request-{request_id}"
        assert run.tags == {
            REQUEST_TAG: str(request_id),
            SUBSCRIPTION_TAG: str(platform.subscription_id),
        }
        (add,) = result.dynamic_partitions_requests
        assert add.partitions_def_name == "backup_requests"
        assert list(add.partition_keys) == [str(request_id)]
        # A second tick does not review (or launch) the same request again.
        again = backup_request_sensor(
            dg.build_sensor_context(instance=instance, resources=resources)
        )
        assert not again.run_requests


def test_job_delivers_the_request_with_every_column_filled(platform: Platform):
    request_id = file_backup_request(
        platform.engine, subscription_id=platform.subscription_id, user_id=platform.user_id
    )
    resources = build_resources(platform.settings)
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
    assert row.archive_key.startswith(
        f"respaldos/{platform.subscription_id}/{request_id}/respaldo_"
    )
    assert row.archive_key.endswith(".zip")
    assert row.link_expires_at > row.finished_at
    assert row.email_sent_at is not None and row.email_message_id

    data = platform.archives.get_bytes(row.archive_key)
    assert len(data) == row.archive_size_bytes
    assert hashlib.sha256(data).hexdigest() == row.archive_sha256
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
    for expected in (
        "LEEME.txt",
        "SHA256SUMS",
        "pacientes.xlsx",
        "anamnesis.xlsx",
        "consultas.xlsx",
        "tratamientos_odontologicos.xlsx",
        "vacunacion.xlsx",
        "facturacion/ingresos/comprobantes_emitidos.xlsx",
        "facturacion/gastos/comprobantes_recibidos.xlsx",
    ):
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


def test_rerunning_a_delivered_request_sends_no_second_email(platform: Platform):
    request_id = file_backup_request(
        platform.engine, subscription_id=platform.subscription_id, user_id=platform.user_id
    )
    resources = build_resources(platform.settings)
    with dg.instance_for_test() as instance:
        first = execute_request(instance, resources, request_id, platform.subscription_id)
        second = execute_request(instance, resources, request_id, platform.subscription_id)
    assert first.success and first.request_status == "delivered"
    assert not second.success  # refused: the request is already delivered
    assert second.request_status == "delivered"  # and it stays so: a refusal is not a failure
    assert len(list(platform.outbox.glob("*.eml"))) == 1
