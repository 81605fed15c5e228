"""adjuntos.xlsx through the real job: every attachment listed with its patient, its name as
uploaded, date, type and size, and where it is (which path, in which part), so that a name
shortened for Windows is never lost."""

from __future__ import annotations

import hashlib
import os
import threading
import unicodedata
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from backup_pipeline import platform as db
from backup_pipeline.archive.plan import (
    FilePlan,
    read_plan,
    stage_plan,
    staged_plan,
    summary_key,
)
from backup_pipeline.archive.zipper import ArchiveCancelled
from backup_pipeline.datasets import attachments as attachments_index
from backup_pipeline.datasets.base import ExtractContext
from backup_pipeline.platform import tables as t
from backup_pipeline.rules.archive_parts import archive_spans
from backup_pipeline_tests.support.acceptance import Archive
from backup_pipeline_tests.support.platform import Platform, build_platform

INDEX = "adjuntos.xlsx"
ZONE = ZoneInfo("America/Mexico_City")
UPLOADED = datetime(2026, 5, 4, 3, 2, 1)  # naive UTC, as the platform stores it
LONG_NAME = "Radiografía panorámica de control posterior a la extracción " * 4 + "(final).jpeg"
LONG_LAST_NAME = "De la Santísima Trinidad " * 4
# Windows Explorer's limit leaves 140 UTF-16 units for a path inside the zip, 70 for its name.
MAX_ENTRY_UNITS = 140
MAX_ZIP_NAME_UNITS = 70


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def add_patient(platform: Platform, patient_id: int, first: str, last: str) -> None:
    with platform.engine.begin() as conn:
        conn.execute(
            insert(t.patients).values(
                id=patient_id,
                subscription_id=1,
                first_name=first,
                last_name=last,
                created_at=UPLOADED - timedelta(days=30),
            )
        )


def add_attachment(
    platform: Platform,
    attachment_id: int,
    patient_id: int,
    file_name: str,
    *,
    size: int = 150_000,
    content_type: str | None = "image/jpeg",
    stored: bool = True,
) -> bytes:
    """One attachment row and, when `stored`, its file (random bytes) in the files store."""
    data = os.urandom(size)
    key = f"files/{patient_id}/{attachment_id}"
    if stored:
        platform.files.put_bytes(key, data, content_type or "application/octet-stream")
    with platform.engine.begin() as conn:
        conn.execute(
            insert(t.attachments).values(
                id=attachment_id,
                subscription_id=1,
                patient_id=patient_id,
                storage_key=key,
                file_name=file_name,
                content_type=content_type,
                size_bytes=size,
                sha256=hashlib.sha256(data).hexdigest(),
                uploaded_at=UPLOADED + timedelta(minutes=attachment_id),
            )
        )
    return data


@pytest.fixture(scope="module")
def parted(tmp_path_factory):
    """A clinic of five patients, about one patient's folder per part of 1,000,000 bytes."""
    root = tmp_path_factory.mktemp("index")
    platform = build_platform(root, env={"BACKUP_PART_SIZE": "1000000"})
    clinic = platform.add_clinic(1, name="Clínica Dental 😀 Sonrisas del Norte de Nuevo León")
    uploaded: dict[int, tuple[str, bytes | None]] = {}
    add_patient(platform, 10, "María Guadalupe", LONG_LAST_NAME)
    for attachment_id, name in [(1, LONG_NAME), (2, "Foto.JPG"), (3, "foto.jpg")]:
        uploaded[attachment_id] = (name, add_attachment(platform, attachment_id, 10, name))
    uploaded[4] = ("perdido.pdf", None)
    add_attachment(platform, 4, 10, "perdido.pdf", content_type="application/pdf", stored=False)
    for patient_id in (11, 12, 13, 14):
        add_patient(platform, patient_id, "Ana", f"Paciente{patient_id}")
        for n in range(3):
            attachment_id = patient_id * 10 + n
            name = f'=HYPERLINK("x") estudio {n}.png' if n == 0 else f"estudio {n}.png"
            data = add_attachment(platform, attachment_id, patient_id, name, content_type=None)
            uploaded[attachment_id] = (name, data)
    backup = platform.back_up(clinic)
    assert backup.delivered, backup.request.status_detail
    with platform.engine.connect() as conn:
        keys = [part.archive_key for part in db.parts_of(conn, backup.request_id)]
    parts = [Archive(platform.archives.get_bytes(key)) for key in keys]
    yield keys, parts, uploaded
    platform.close()


def index_rows(parts: list[Archive]) -> list[dict]:
    return parts[0].sheet_rows(INDEX)


def test_the_index_lists_every_attachment_with_its_patient_name_date_type_and_size(parted):
    keys, parts, uploaded = parted
    assert len(keys) >= 3  # several parts, so that the part column and every part are tried
    rows = index_rows(parts)
    assert sorted(row["ID archivo adjunto"] for row in rows) == sorted(uploaded)
    by_id = {row["ID archivo adjunto"]: row for row in rows}
    for attachment_id, (name, _data) in uploaded.items():
        row = by_id[attachment_id]
        assert row["Nombre original del archivo"] == name  # formula-like text stays text
        local = (UPLOADED + timedelta(minutes=attachment_id)).replace(tzinfo=ZoneInfo("UTC"))
        assert row["Fecha de carga"] == local.astimezone(ZONE).replace(tzinfo=None)
        assert row["Tamaño (bytes)"] == 150_000
        patient_id = row["ID paciente"]
        assert patient_id == (10 if attachment_id < 10 else attachment_id // 10)
        expected_patient = (
            f"{' '.join(LONG_LAST_NAME.split())} María Guadalupe"
            if patient_id == 10
            else f"Paciente{patient_id} Ana"
        )
        assert row["Paciente"] == expected_patient
    assert by_id[1]["Tipo de archivo"] == "image/jpeg"
    assert by_id[4]["Tipo de archivo"] == "application/pdf"
    assert by_id[110]["Tipo de archivo"] is None
    workbook = parts[0].workbooks[INDEX]
    cell = next(c for c in workbook.worksheets[0]["D"] if str(c.value).startswith("=HYPERLINK"))
    assert cell.data_type == "s"


def test_every_indexed_path_is_in_the_part_it_names_with_the_uploaded_bytes(parted):
    _keys, parts, uploaded = parted
    rows = index_rows(parts)
    assert {row["Parte del respaldo"] for row in rows} <= set(range(1, len(parts) + 1))
    assert len({row["Parte del respaldo"] for row in rows}) > 1
    for row in rows:
        path, part = row["Ubicación en el respaldo"], row["Parte del respaldo"]
        data = uploaded[row["ID archivo adjunto"]][1]
        if data is None:
            continue  # could not be copied: see the next test
        assert parts[part - 1].read(path) == data
        assert all(path not in other.names for other in parts if other is not parts[part - 1])


def test_a_file_that_could_not_be_copied_is_indexed_and_listed_as_missing(parted):
    _keys, parts, _uploaded = parted
    (row,) = [row for row in index_rows(parts) if row["ID archivo adjunto"] == 4]
    path = row["Ubicación en el respaldo"]
    assert path.endswith("/perdido.pdf")
    assert all(path not in part.names for part in parts)
    listed = [
        value
        for part in parts
        for name in part.names
        if name.rsplit("/", 1)[-1].startswith("archivos_no_incluidos")
        for missing in part.sheet_rows(name)
        for value in missing.values()
    ]
    assert path in listed


def test_a_shortened_name_is_recoverable_from_the_index(parted):
    _keys, parts, uploaded = parted
    by_original = {row["Nombre original del archivo"]: row for row in index_rows(parts)}
    row = by_original[LONG_NAME]
    path = row["Ubicación en el respaldo"]
    folder, name = path.rsplit("/", 1)
    assert name != LONG_NAME and LONG_NAME.startswith(name.removesuffix(".jpeg"))
    assert name.endswith(".jpeg") and folder.endswith(" (10)")
    assert parts[row["Parte del respaldo"] - 1].read(path) == uploaded[1][1]
    # Case twins are two files on Windows and macOS too.
    twins = [by_original[n]["Ubicación en el respaldo"] for n in ("Foto.JPG", "foto.jpg")]
    assert [p.rsplit("/", 1)[1] for p in twins] == ["Foto.JPG", "foto (2).jpg"]
    leeme = parts[0].text("LEEME.txt")
    assert "adjuntos.xlsx" in leeme and "se acortó el nombre de 4 archivos adjuntos" in leeme


def test_every_part_extracts_on_windows(parted):
    keys, parts, _uploaded = parted
    assert all(utf16_length(key.rsplit("/", 1)[1]) <= MAX_ZIP_NAME_UNITS for key in keys)
    entries = [name for part in parts for name in part.names]
    assert all(utf16_length(name) <= MAX_ENTRY_UNITS for name in entries)
    files = [name for name in entries if "/" in name]  # the part's own notes repeat by design
    folded = {unicodedata.normalize("NFC", name).casefold() for name in files}
    assert len(folded) == len(files)


def extract_index(platform: Platform, **context) -> tuple[list[str], list[dict]]:
    with platform.engine.connect() as conn:
        extraction = attachments_index.DATASET.extract(
            ExtractContext(
                connection=conn,
                subscription_id=1,
                files=platform.files,
                timezone="America/Mexico_City",
                chunksize=2,
                **context,
            )
        )
        chunks = list(extraction.chunks)
    assert all(len(chunk) <= 2 for chunk in chunks)  # streamed in chunks of the run's size
    rows = [row for chunk in chunks for row in chunk.to_dict("records")]
    return [column.header for column in extraction.columns], rows


def test_a_single_part_archive_has_no_part_column_and_a_parted_one_does(tmp_path):
    platform = build_platform(tmp_path)
    platform.add_clinic(1)
    add_patient(platform, 10, "Ana", "García")
    for attachment_id in range(1, 6):
        add_attachment(platform, attachment_id, 10, f"estudio {attachment_id}.jpg", size=400_000)
    with platform.engine.connect() as conn:
        plan = stage_plan(conn, 1, platform.archives, "staging/plan.jsonl")

    headers, rows = extract_index(platform)  # no run: the files are planned from the database
    assert "Parte del respaldo" not in headers
    assert [row["archive_path"] for row in rows] == [
        f"adjuntos/García Ana (10)/estudio {n}.jpg" for n in range(1, 6)
    ]
    headers, rows = extract_index(
        platform, archives=platform.archives, plan=plan, part_size=1_000_000
    )
    assert headers[-1] == "Parte del respaldo"
    # A folder larger than a part is cut between its files, as the zip cuts it (the one split).
    spans = archive_spans(read_plan(platform.archives, plan), 1_000_000)
    expected = [span.number for span in spans for _ in range(span.start, span.stop)]
    assert [row["part"] for row in rows] == expected
    assert len(set(expected)) >= 3 and expected == sorted(expected)
    platform.close()


def test_a_staged_plan_is_found_again_whole_and_the_index_may_wait_for_it(tmp_path):
    platform = build_platform(tmp_path)
    platform.add_clinic(1)
    add_patient(platform, 10, "Ana", "García")
    add_attachment(platform, 1, 10, "estudio.jpg", size=400_000)
    key = "staging/1/run-1/plan.jsonl"
    assert staged_plan(platform.archives, key) is None  # not planned yet
    with platform.engine.connect() as conn:
        plan = stage_plan(conn, 1, platform.archives, key)

    # What a retry of the step, or a worker forked before the plan was made, reads back.
    assert staged_plan(platform.archives, key) == plan
    assert plan.files == 1 and plan.expected_bytes == 400_000
    # The index takes the run's plan from a callable: a worker's waits for the run to make it.
    asked: list[bool] = []

    def when_ready() -> FilePlan:
        asked.append(True)
        return plan

    _, rows = extract_index(platform, archives=platform.archives, plan=when_ready)
    assert asked and [row["archive_path"] for row in rows] == [
        "adjuntos/García Ana (10)/estudio.jpg"
    ]
    # A damaged summary, or a plan gone from staging: planned again, never half read.
    platform.archives.put_bytes(summary_key(key), b"{not json", "application/json")
    assert staged_plan(platform.archives, key) is None
    with platform.engine.connect() as conn:
        stage_plan(conn, 1, platform.archives, key)
    platform.archives.delete(key)
    assert staged_plan(platform.archives, key) is None
    platform.close()


def test_planning_stops_between_two_batches_once_the_archive_is_no_longer_wanted(tmp_path):
    platform = build_platform(tmp_path)
    platform.add_clinic(1)
    add_patient(platform, 10, "Ana", "García")
    add_attachment(platform, 1, 10, "estudio.jpg", size=400_000)
    cancelled = threading.Event()
    cancelled.set()
    with platform.engine.connect() as conn, pytest.raises(ArchiveCancelled):
        stage_plan(conn, 1, platform.archives, "staging/plan.jsonl", cancelled)
    assert staged_plan(platform.archives, "staging/plan.jsonl") is None
    platform.close()
