"""The workbooks rendered in worker processes beside the zip: the same archive as one after
another, a failing workbook named to the clinic, no worker left behind."""

from __future__ import annotations

import io
import os
import signal
import zipfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from openpyxl import load_workbook

from backup_pipeline.archive.verify import SHA256SUMS, verify_zip
from backup_pipeline.datasets import DATASETS, dental_treatments, export
from backup_pipeline.datasets.base import ExtractContext, Extraction
from backup_pipeline.jobs import PLAN_OUTPUT, export_output
from backup_pipeline.operations import execute_request
from backup_pipeline.rules.leeme import MISSING_REPORT_PATH
from backup_pipeline.services import export as export_service
from backup_pipeline_tests.support.platform import LOCAL, Clinic, Platform, open_platform
from backup_pipeline_tests.support.sendgrid import read_outbox

REQUESTED_AT = datetime(2026, 11, 20, 15, 30)
PATIENTS = 10


def _back_up(platform: Platform, clinic: Clinic, workers: int) -> tuple[dict[str, bytes], str]:
    """Back the clinic up with `workers`; the archive's entries and the run's id."""
    request_id = platform.file_request(clinic, requested_at=REQUESTED_AT)
    resources = platform.resources(replace(platform.settings, export_workers=workers))
    outcome = execute_request(platform.instance, resources, request_id, clinic.subscription_id)
    assert outcome.success and outcome.request_status == "delivered"
    data = platform.archives.get_bytes(platform.request(request_id).archive_key)
    report = verify_zip(io.BytesIO(data))
    assert report.ok, report.problems
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}, outcome.run_id


def test_the_archive_is_the_same_with_worker_processes_as_one_after_another(
    request: pytest.FixtureRequest,
):
    platform = open_platform(request, LOCAL)
    (clinic,) = platform.seed(patients=PATIENTS, seed=21)
    serial, _ = _back_up(platform, clinic, workers=0)
    parallel, run_id = _back_up(platform, clinic, workers=2)

    assert sorted(parallel) == sorted(serial)
    # Every entry is byte for byte the same, the datasets' workbooks included (their creation
    # date is the request's). What the assembly writes says when: LEEME.txt its text, the
    # missing files' workbook its creation date; those are compared by content.
    dated = {"LEEME.txt", MISSING_REPORT_PATH}
    differing = {name for name in serial if serial[name] != parallel[name]}
    assert differing <= {*dated, SHA256SUMS}
    assert _rows(parallel[MISSING_REPORT_PATH]) == _rows(serial[MISSING_REPORT_PATH])

    def undated(sums: bytes) -> list[bytes]:
        return [line for line in sums.splitlines() if line.split(b"  ", 1)[1].decode() not in dated]

    assert undated(parallel[SHA256SUMS]) == undated(serial[SHA256SUMS])
    # Each workbook is its own output of assemble_backup, with its rows and time.
    for dataset in DATASETS:
        metadata = platform.step_output_metadata(run_id, "assemble_backup", export_output(dataset))
        assert metadata["rows"] >= 0 and metadata["seconds"] > 0
    # The file plan too, made while the workers rendered: counts and bytes, no file's name.
    plan = platform.step_output_metadata(run_id, "assemble_backup", PLAN_OUTPUT)
    archive = platform.step_output_metadata(run_id, "assemble_backup", "archive")
    assert plan["files"] == archive["files_copied"] + archive["missing_files"] > 0
    assert plan["expected_bytes"] > 0
    assert sum(v for k, v in plan.items() if k not in ("files", "expected_bytes")) == plan["files"]


def _rows(workbook: bytes) -> list[tuple]:
    book = load_workbook(io.BytesIO(workbook), read_only=True)
    return [row for sheet in book.worksheets for row in sheet.iter_rows(values_only=True)]


class _Broken(Exception):
    pass


def test_a_workbook_failing_in_a_worker_fails_the_request_naming_that_workbook(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    platform = open_platform(request, LOCAL)
    (clinic,) = platform.seed(patients=PATIENTS, seed=21)

    def broken(ctx: ExtractContext) -> Extraction:
        raise _Broken("fila 7: Pérez García")  # patient data in the error: must not travel

    # The worker processes are forked from this one: they inherit the broken extraction.
    monkeypatch.setattr(dental_treatments.DATASET, "extract", broken)
    request_id = platform.file_request(clinic)
    resources = platform.resources(replace(platform.settings, export_workers=2))
    outcome = execute_request(platform.instance, resources, request_id, clinic.subscription_id)

    assert not outcome.success and outcome.request_status == "failed"
    retries = platform.step_events(
        outcome.run_id, "assemble_backup", dg.DagsterEventType.STEP_UP_FOR_RETRY
    )
    assert retries == platform.settings.op_max_retries
    row = platform.request(request_id)
    assert "el respaldo de sus tratamientos odontológicos" in row.status_detail
    assert "Pérez" not in row.status_detail
    (alert,) = [m for m in read_outbox(platform.outbox) if m.to == platform.settings.support_email]
    assert "step=export_dental_treatments error=_Broken" in alert.text
    assert "Pérez" not in alert.text
    # Nor in what the run logged: the error's class and where it was raised, not its text.
    logged = " ".join(
        str(record.dagster_event.event_specific_data)
        for record in platform.instance.all_logs(outcome.run_id)
        if record.dagster_event is not None
    )
    assert "the export of dental_treatments failed: _Broken" in logged
    assert "Pérez" not in logged
    assert platform.archives_made() == []


def test_a_worker_killed_during_a_run_fails_the_request_naming_its_workbook(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    platform = open_platform(request, LOCAL)
    (clinic,) = platform.seed(patients=PATIENTS, seed=21)
    real_extract = dental_treatments.DATASET.extract

    def killed(ctx: ExtractContext) -> Extraction:
        if os.getpid() != here:  # in a worker: as the kernel's out-of-memory killer would
            os.kill(os.getpid(), signal.SIGKILL)
        return real_extract(ctx)

    here = os.getpid()
    monkeypatch.setattr(dental_treatments.DATASET, "extract", killed)
    request_id = platform.file_request(clinic)
    resources = platform.resources(replace(platform.settings, export_workers=2))
    outcome = execute_request(platform.instance, resources, request_id, clinic.subscription_id)

    assert not outcome.success and outcome.request_status == "failed"
    row = platform.request(request_id)
    assert "el respaldo de sus tratamientos odontológicos" in row.status_detail
    (alert,) = [m for m in read_outbox(platform.outbox) if m.to == platform.settings.support_email]
    assert "step=export_dental_treatments error=BrokenProcessPool" in alert.text
    assert platform.archives_made() == []


def test_a_retried_step_keeps_the_workbooks_an_earlier_attempt_staged(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    platform = open_platform(request, LOCAL)
    (clinic,) = platform.seed(patients=PATIENTS, seed=21)
    renders = tmp_path / "renders"  # a line per workbook rendered, from whichever process
    real_render, real_build = export.render_workbook, export_service.build_archive
    failed_once: list[bool] = []

    def counted_render(extraction, **kwargs):
        with renders.open("a") as out:
            out.write(kwargs["archive_path"] + "\n")
        return real_render(extraction, **kwargs)

    def build_failing_once(**kwargs):
        if not failed_once:
            failed_once.append(True)
            list(kwargs["exports"]())  # the workbooks are all staged, then the storage fails
            raise ConnectionResetError("the archives store dropped the upload")
        return real_build(**kwargs)

    monkeypatch.setattr(export, "render_workbook", counted_render)
    monkeypatch.setattr(export_service, "build_archive", build_failing_once)
    request_id = platform.file_request(clinic)
    resources = platform.resources(replace(platform.settings, export_workers=2))
    outcome = execute_request(platform.instance, resources, request_id, clinic.subscription_id)

    assert outcome.success and outcome.request_status == "delivered"
    retries = platform.step_events(
        outcome.run_id, "assemble_backup", dg.DagsterEventType.STEP_UP_FOR_RETRY
    )
    assert retries == 1
    rendered = renders.read_text().splitlines()
    assert sorted(rendered) == sorted(d.archive_path for d in DATASETS)  # each once
    outputs = [
        record.dagster_event.event_specific_data
        for record in platform.instance.all_logs(
            outcome.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT
        )
        if record.dagster_event is not None
        and record.dagster_event.event_specific_data.step_output_handle.output_name.startswith(
            "export_"
        )
    ]
    reused = [o.metadata["staged_by_an_earlier_attempt"].value for o in outputs]
    # The retry reported every workbook as staged before; the failed attempt, those it had
    # reported when the zip failed.
    assert reused.count(True) == len(DATASETS) and reused.count(False) <= len(DATASETS)
    data = platform.archives.get_bytes(platform.request(request_id).archive_key)
    assert verify_zip(io.BytesIO(data)).ok
