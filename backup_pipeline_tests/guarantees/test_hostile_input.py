"""Hostile input through the whole job, and the property tests of names, cells and CFDI it rests on.

Each end-to-end case files a request against SQLite and folder stores (one case also on
PostgreSQL), runs the real backup job in process and opens the zip it delivered.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import os
import re
import threading
import unicodedata
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

import dagster as dg
import pandas as pd
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook
from sqlalchemy import create_engine, insert, update

from backup_pipeline.archive.plan import plan_files
from backup_pipeline.archive.verify import verify_zip
from backup_pipeline.datasets.base import Column, Extraction
from backup_pipeline.datasets.invoices import read_cfdi
from backup_pipeline.datasets.workbook import render_workbook
from backup_pipeline.platform import create_schema
from backup_pipeline.platform import tables as t
from backup_pipeline.rules import archive_names, cfdi
from backup_pipeline.rules.archive_entries import KIND_ATTACHMENT
from backup_pipeline.rules.archive_names import UniqueNames
from backup_pipeline.rules.request_state import BackupRequest
from backup_pipeline.storage.folder import FolderStore
from backup_pipeline_tests.rules.test_archive_names import assert_safe
from backup_pipeline_tests.support.oracles import as_the_clinic_wrote_it, stays_in_the_archive
from backup_pipeline_tests.support.platform import (
    EVERY_DATABASE,
    WORKBOOKS,
    Clinic,
    Platform,
    build_platform,
)

MiB = 1024 * 1024
SAMPLES = Path(__file__).parents[1] / "data" / "cfdi"
SAMPLE_UUID = "A1D3E6C1-580A-4265-BF6F-A682314EDCA4"  # the UUID inside cfdi40_ingreso.xml
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NOW = datetime(2026, 3, 2, 15, 0)


# --- a platform of our own making -----------------------------------------------------------------


CLINIC = Clinic(subscription_id=1, owner_id=10)  # the clinic these tests build by hand


def add_clinic(platform: Platform) -> Clinic:
    """A subscription and its owner: a clinic that has not entered anything yet."""
    return platform.add_clinic(
        CLINIC.subscription_id,
        owner_id=CLINIC.owner_id,
        name="Consultorio Dental Prueba",
        owner_email="duena@consultorio.example",
        owner_name="Dueña del consultorio",
        created_at=NOW - timedelta(days=30),
    )


def add_patient(platform: Platform, patient_id: int, **values) -> None:
    row = {"first_name": "Ana", "last_name": "Prueba", "created_at": NOW - timedelta(days=5)}
    row.update(values)
    with platform.engine.begin() as conn:
        conn.execute(
            insert(t.patients).values(id=patient_id, subscription_id=CLINIC.subscription_id, **row)
        )


def add_attachments(platform: Platform, patient_id: int, files: list[tuple[str, str]]) -> None:
    """(file_name, storage_key) rows for one patient, inserted in one statement."""
    first = patient_id * 100_000
    rows = [
        {
            "id": first + n,
            "subscription_id": CLINIC.subscription_id,
            "patient_id": patient_id,
            "storage_key": key,
            "file_name": name,
            "uploaded_at": NOW - timedelta(days=1, seconds=-n),
        }
        for n, (name, key) in enumerate(files, start=1)
    ]
    with platform.engine.begin() as conn:
        conn.execute(insert(t.attachments), rows)


def write_file(platform: Platform, key: str, data: bytes) -> None:
    # Straight to the folder: seeding thousands of objects needs no atomic replace per file.
    path = platform.files.root.joinpath(*key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@dataclass
class Delivered:
    request: BackupRequest
    zip_path: Path
    emails: int


def back_up(platform: Platform, clinic: Clinic = CLINIC) -> Delivered:
    """File a request as the owner, run the backup job for it, and check it was delivered."""
    with dg.instance_for_test() as instance:
        backup = platform.back_up(clinic, instance=instance)
    request = backup.request
    assert backup.outcome.success, f"run {backup.outcome.run_id} failed: {request.status_detail}"
    assert request.status == "delivered"
    zip_path = platform.archives.root.joinpath(*request.archive_key.split("/"))
    return Delivered(request, zip_path, len(platform.sent()))


def assert_complete(delivered: Delivered) -> list[str]:
    """The zip verifies against its SHA256SUMS and matches the request's record; its names."""
    report = verify_zip(delivered.zip_path)
    assert report.ok, report.problems
    data_sha = hashlib.sha256(delivered.zip_path.read_bytes()).hexdigest()
    assert data_sha == delivered.request.archive_sha256
    assert delivered.zip_path.stat().st_size == delivered.request.archive_size_bytes
    assert delivered.emails == 1
    with zipfile.ZipFile(delivered.zip_path) as zf:
        names = zf.namelist()
    assert {"LEEME.txt", "SHA256SUMS", *WORKBOOKS} <= set(names)
    return names


def sheet_rows(zf: zipfile.ZipFile, path: str, *, with_header: bool = False) -> list[tuple]:
    book = load_workbook(io.BytesIO(zf.read(path)), read_only=True)
    first = 1 if with_header else 2
    try:
        return [tuple(r) for r in book.worksheets[0].iter_rows(min_row=first, values_only=True)]
    finally:
        book.close()


def sums_of(zf: zipfile.ZipFile) -> dict[str, str]:
    lines = zf.read("SHA256SUMS").decode().splitlines()
    return {line[66:]: line[:64] for line in lines}


# --- a clinic with nothing in it ------------------------------------------------------------------


def test_a_clinic_with_no_data_gets_a_complete_archive_of_empty_workbooks(tmp_path: Path) -> None:
    platform = build_platform(tmp_path)
    add_clinic(platform)

    delivered = back_up(platform)

    names = assert_complete(delivered)
    assert not [n for n in names if n.startswith(("adjuntos/", "facturacion/ingresos/xml/"))]
    assert "archivos_no_incluidos.xlsx" not in names
    with zipfile.ZipFile(delivered.zip_path) as zf:
        for workbook in WORKBOOKS:
            assert sheet_rows(zf, workbook) == [], workbook
        assert "0" in zf.read("LEEME.txt").decode("utf-8-sig", errors="replace")


# --- NULL in every nullable column ----------------------------------------------------------------


def nullable_columns(table) -> list[str]:
    return [c.name for c in table.columns if c.nullable and not c.primary_key]


@pytest.mark.parametrize("backends", EVERY_DATABASE)
def test_null_in_every_nullable_column_still_gives_a_complete_archive(platform: Platform) -> None:
    (clinic,) = platform.seed(patients=6, seed=3)
    nulled = 0
    with platform.engine.begin() as conn:
        for table in t.PLATFORM_TABLES:
            if table is t.backup_requests:  # ours to fill, not the clinic's data
                continue
            columns = nullable_columns(table)
            if columns:
                nulled += conn.execute(update(table).values(dict.fromkeys(columns))).rowcount
        patients = conn.execute(t.patients.select()).all()
        attachments = conn.execute(t.attachments.select()).all()
        invoices = conn.execute(t.cfdi_documents.select()).all()
    assert nulled > 100 and patients and attachments and invoices

    delivered = back_up(platform, clinic)

    names = assert_complete(delivered)
    with zipfile.ZipFile(delivered.zip_path) as zf:
        header, *rows = sheet_rows(zf, "pacientes.xlsx", with_header=True)
    # deleted_at is NULL too, so every patient is live, with nothing but a name and a date.
    assert sorted(r[0] for r in rows) == sorted(p.id for p in patients)
    filled = {h for r in rows for h, value in zip(header, r, strict=True) if value is not None}
    assert filled == {"ID paciente", "Paciente", "Nombre", "Fecha de registro"}
    folders = {PurePosixPath(n).parts[1] for n in names if n.startswith("adjuntos/")}
    assert folders <= {f"{p.first_name} ({p.id})" for p in patients}
    copied = [n for n in names if n.startswith(("adjuntos/", "facturacion/"))]
    # Every attachment and XML was copied (no PDF: its key is NULL now), plus the two reports.
    assert len(copied) == len(attachments) + len(invoices) + 2


# --- one clinic full of hostile files -------------------------------------------------------------


HOSTILE_NAMES = [
    "",
    ".",
    "..",
    "../../../etc/passwd",
    "/etc/shadow",
    "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "CON",
    "nul.txt",
    "Com1.jpg",
    " . ",
    ".bashrc",
    "factura\u202egnp.exe",
    "línea\nnueva.png",
    "tab\there.png",
    "nulo\x00oculto.pdf",
    '?*<>|:".pdf',
    "Foto.PNG",
    "foto.png",
    "FOTO.png",
    "foto (2).png",
    "e\u0301xito.jpg",
    "éxito.jpg",
    "😀" * 80 + ".jpg",
    "a" * 400 + ".pdf",
    "radiografía panorámica.jpg",
]
FORMULA = '=HYPERLINK("http://example.com/x","ver")'


@pytest.fixture(scope="module")
def hostile_clinic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Platform, Delivered]:
    """One run over a clinic whose patient, file names, files and invoices are all hostile."""
    platform = build_platform(tmp_path_factory.mktemp("hostile"))
    add_clinic(platform)
    add_patient(
        platform,
        101,
        first_name="CON",
        last_name="../..",
        second_last_name="\u202e\x00",
        notes=FORMULA,
        allergies="-1+1",
    )
    files = []
    for n, name in enumerate(HOSTILE_NAMES):
        key = f"files/101/{n}.bin"
        write_file(platform, key, f"file {n}".encode())
        files.append((name, key))
    write_file(platform, "files/101/empty.pdf", b"")
    files.append(("vacío.pdf", "files/101/empty.pdf"))
    # Keys no store can hold, and one that names nothing: reported, never fatal.
    files += [("escape.jpg", "../outside.jpg"), ("raiz.jpg", "/abs.jpg")]
    files += [("barra.jpg", "files\\101\\x.jpg"), ("perdido.jpg", "files/101/gone.jpg")]
    add_attachments(platform, 101, files)

    concepto = (
        b'<cfdi:Concepto ClaveProdServ="85121800" Cantidad="1" ClaveUnidad="E48" '
        b'Descripcion="Limpieza dental" ValorUnitario="1.00" Importe="1.00" ObjetoImp="01"/>'
    )
    big = (SAMPLES / "cfdi40_ingreso.xml").read_bytes()
    big = big.replace(b"<cfdi:Conceptos>", b"<cfdi:Conceptos>" + concepto * (5 * MiB // 150))
    assert len(big) > 5 * MiB
    invoices = [
        ("issued", SAMPLE_UUID, big),
        ("issued", "B0000000-0000-4000-8000-000000000001", (SAMPLES / "billion_laughs.xml").read_bytes()),
        ("received", "B0000000-0000-4000-8000-000000000002", os.urandom(4096)),
        ("received", "B0000000-0000-4000-8000-000000000003", b""),
        ("received", "../../x", "\ufeff<?xml version='1.0' encoding='UTF-16'?><a/>".encode("utf-16")),
    ]  # fmt: skip
    with platform.engine.begin() as conn:
        for n, (direction, uuid, data) in enumerate(invoices, start=1):
            write_file(platform, f"cfdi/{n}.xml", data)
            conn.execute(
                insert(t.cfdi_documents).values(
                    id=n,
                    subscription_id=1,
                    direction=direction,
                    uuid=uuid,
                    xml_storage_key=f"cfdi/{n}.xml",
                    status="vigente",
                    patient_id=101,
                    created_at=NOW,
                )
            )
    return platform, back_up(platform)


def test_hostile_clinic_gets_a_complete_archive(hostile_clinic) -> None:
    _platform, delivered = hostile_clinic
    assert_complete(delivered)


def test_hostile_file_names_stay_in_the_patient_folder_safe_and_distinct(hostile_clinic) -> None:
    _platform, delivered = hostile_clinic
    with zipfile.ZipFile(delivered.zip_path) as zf:
        names = [n for n in zf.namelist() if n.startswith("adjuntos/")]
    (folder,) = {PurePosixPath(n).parts[1] for n in names}
    assert_safe(folder)
    assert folder.startswith("_..") and folder.endswith(" CON (101)")
    for name in names:
        assert stays_in_the_archive(name)
        parts = PurePosixPath(name).parts
        assert len(parts) == 3  # adjuntos/<patient>/<file>: no name adds a folder
        assert_safe(parts[2])
    # Every copyable file survives under its own name, even when Windows would see one name.
    assert len(names) == len(HOSTILE_NAMES) + 1
    assert len({unicodedata.normalize("NFC", n).casefold() for n in names}) == len(names)


def test_a_zero_byte_attachment_is_an_entry_of_zero_bytes(hostile_clinic) -> None:
    _platform, delivered = hostile_clinic
    with zipfile.ZipFile(delivered.zip_path) as zf:
        (info,) = [i for i in zf.infolist() if i.filename.endswith("/vacío.pdf")]
        assert info.file_size == 0
        assert sums_of(zf)[info.filename] == EMPTY_SHA256


def test_unreadable_storage_keys_are_reported_not_fatal(hostile_clinic) -> None:
    _platform, delivered = hostile_clinic
    with zipfile.ZipFile(delivered.zip_path) as zf:
        rows = sheet_rows(zf, "archivos_no_incluidos.xlsx")
    missing = sorted(PurePosixPath(row[0]).name for row in rows if row[1] == "Archivo adjunto")
    assert missing == ["barra.jpg", "escape.jpg", "perdido.jpg", "raiz.jpg"]
    assert all(row[6] for row in rows)  # each says why ("Motivo")
    assert all(row[2] for row in rows)  # and what the file was ("Qué archivo era")


def test_a_five_megabyte_cfdi_is_read_and_copied_byte_for_byte(hostile_clinic) -> None:
    platform, delivered = hostile_clinic
    source = platform.files.get_bytes("cfdi/1.xml")
    with zipfile.ZipFile(delivered.zip_path) as zf:
        entry = f"facturacion/ingresos/xml/{SAMPLE_UUID}.xml"
        assert sums_of(zf)[entry] == hashlib.sha256(source).hexdigest()
        header, *rows = sheet_rows(
            zf, "facturacion/ingresos/comprobantes_emitidos.xlsx", with_header=True
        )
        report = {row[0]: row for row in rows}
    big = report[SAMPLE_UUID]
    assert big[-1] is None  # no observation: read in full
    assert big[header.index("Total")] is not None  # the total, read from the XML
    laughs = report["B0000000-0000-4000-8000-000000000001"]
    assert cfdi.PROBLEM_ENTITIES in laughs[-1]


def test_broken_cfdi_are_copied_as_they_are_with_an_observation(hostile_clinic) -> None:
    platform, delivered = hostile_clinic
    with zipfile.ZipFile(delivered.zip_path) as zf:
        sums = sums_of(zf)
        rows = sheet_rows(zf, "facturacion/gastos/comprobantes_recibidos.xlsx")
        xmls = [n for n in zf.namelist() if n.startswith("facturacion/gastos/xml/")]
    assert len(rows) == 3 and all(row[-1] for row in rows)
    assert len(xmls) == 3 and all(stays_in_the_archive(n) and n.count("/") == 3 for n in xmls)
    copied = sorted(sums[n] for n in xmls)
    sources = sorted(
        hashlib.sha256(platform.files.get_bytes(f"cfdi/{n}.xml")).hexdigest() for n in (3, 4, 5)
    )
    assert copied == sources


def test_formula_looking_patient_text_stays_text_in_the_archive(hostile_clinic) -> None:
    _platform, delivered = hostile_clinic
    with zipfile.ZipFile(delivered.zip_path) as zf:
        book = load_workbook(io.BytesIO(zf.read("pacientes.xlsx")))
    sheet = book.worksheets[0]
    header = [cell.value for cell in sheet[1]]
    row = sheet[2]
    notes = row[header.index("Notas")]
    allergies = row[header.index("Alergias")]
    assert (notes.data_type, notes.value) == ("s", FORMULA)
    assert (allergies.data_type, allergies.value) == ("s", "-1+1")
    assert not [c for line in sheet.iter_rows() for c in line if c.data_type == "f"]


# --- many files, big files ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_patient_with_ten_thousand_attachments_gets_every_one(tmp_path: Path) -> None:
    platform = build_platform(tmp_path)
    add_clinic(platform)
    add_patient(platform, 7, first_name="Mucho", last_name="Archivo")
    files = []
    for n in range(10_000):
        # Phones name every photo alike: half are 'image.jpg', in mixed case.
        name = ("IMAGE.jpg" if n % 4 == 0 else "image.jpg") if n % 2 == 0 else f"estudio {n}.pdf"
        key = f"files/7/{n}"
        write_file(platform, key, n.to_bytes(4, "big"))
        files.append((name, key))
    add_attachments(platform, 7, files)

    delivered = back_up(platform)

    names = assert_complete(delivered)
    attached = [n for n in names if n.startswith("adjuntos/")]
    assert len(attached) == 10_000
    assert len({n.casefold() for n in attached}) == 10_000
    assert "adjuntos/Archivo Mucho (7)/image (5000).jpg" in attached


def test_same_name_many_times_costs_one_candidate_per_name(monkeypatch) -> None:
    """A folder of n 'image.jpg' must not try 1 + 2 + ... + n numbered candidates."""
    calls = 0
    numbered = archive_names._numbered

    def counting(*args):
        nonlocal calls
        calls += 1
        return numbered(*args)

    monkeypatch.setattr(archive_names, "_numbered", counting)
    names = UniqueNames()
    paths = [names.path("f", "image.jpg", fallback="archivo") for _ in range(2_000)]
    assert paths[-1] == "f/image (2000).jpg"
    assert calls <= 2 * len(paths)


def rss_peak_during(action) -> tuple[int, int]:
    """(RSS before, highest RSS sampled while action ran) of this process."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return baseline, max(peak, process.memory_info().rss)


def test_a_200_megabyte_attachment_streams_through_without_holding_it_in_memory(
    tmp_path: Path,
) -> None:
    platform = build_platform(tmp_path)
    add_clinic(platform)
    add_patient(platform, 8, first_name="Tomografía", last_name="Grande")
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with platform.files.open_write("files/8/ct.jpg") as out:
        for n in range(200):
            chunk = block[n:] + block[:n]  # no two MiB alike, so nothing deduplicates
            digest.update(chunk)
            out.write(chunk)
    add_attachments(platform, 8, [("tomografía.jpg", "files/8/ct.jpg")])
    with platform.engine.begin() as conn:
        conn.execute(update(t.attachments).values(size_bytes=200 * MiB, sha256=digest.hexdigest()))

    result: list[Delivered] = []
    baseline, peak = rss_peak_during(lambda: result.append(back_up(platform)))

    (delivered,) = result
    assert_complete(delivered)
    with zipfile.ZipFile(delivered.zip_path) as zf:
        entry = "adjuntos/Grande Tomografía (8)/tomografía.jpg"
        info = zf.getinfo(entry)
        assert info.file_size == 200 * MiB
        assert info.compress_type == zipfile.ZIP_STORED  # a JPEG is not deflated again
        assert sums_of(zf)[entry] == digest.hexdigest()
    growth = peak - baseline
    print(f"RSS before {baseline / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB (+{growth / MiB:.0f})")
    assert growth < 100 * MiB


# --- properties: names ----------------------------------------------------------------------------


# The few names below as the naming rule makes each one a safe name within 64 bytes, written out
# by hand: '.' and '' become the fallback, a device name gets a '_', a long stem is cut to fit.
SAFE_BASE = {
    "..": "archivo",
    "": "archivo",
    "con": "_con",
    "x" * 70 + ".jpg": "x" * 60 + ".jpg",
}


def with_number(base: str, number: int, max_bytes: int = 64) -> str:
    """'<stem> (n)<extension>', the stem cut to fit: the rule, for the ASCII-stemmed names below."""
    stem, dot, extension = base.rpartition(".")
    if not dot or not stem:
        stem, extension = base, ""
    else:
        extension = "." + extension
    suffix = f" ({number}){extension}"
    return stem[: max_bytes - len(suffix.encode())] + suffix


def naive_unique_path(taken: dict[str, set[str]], folder: str, name: str) -> str:
    """The first free '<stem> (n)<ext>' by trying n = 2, 3, ... from scratch: the reference."""
    used = taken.setdefault(folder, set())
    base = SAFE_BASE.get(name, name)
    candidate, number = base, 1
    while unicodedata.normalize("NFC", candidate.casefold()) in used:
        number += 1
        candidate = with_number(base, number)
    used.add(unicodedata.normalize("NFC", candidate.casefold()))
    return f"{folder}/{candidate}"


few_names = st.sampled_from(
    ["a.png", "A.PNG", "a (2).png", "a (3).png", "a", "A (2)", "..", "", "con", "ß.txt", "SS.txt", "x" * 70 + ".jpg"]
)  # fmt: skip


@given(st.lists(st.tuples(st.sampled_from(["f", "g"]), few_names), max_size=60))
@settings(max_examples=300)
def test_unique_names_equal_the_first_free_number_and_are_never_empty_or_reserved(
    items: list[tuple[str, str]],
) -> None:
    names = UniqueNames(max_bytes=64)
    taken: dict[str, set[str]] = {}
    for folder, raw in items:
        path = names.path(folder, raw, fallback="archivo")
        assert path == naive_unique_path(taken, folder, raw)
        assert_safe(path.split("/", 1)[1], 64)


@given(st.lists(st.text(max_size=40), max_size=20))
def test_the_plan_names_the_same_files_the_same_way_every_time(raws: list[str]) -> None:
    engine = create_engine("sqlite://")
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(t.subscriptions).values(id=1, name="c", status="active", created_at=NOW)
        )
        conn.execute(insert(t.patients).values(id=5, subscription_id=1, first_name="Ana", created_at=NOW))  # fmt: skip
        if raws:
            conn.execute(
                insert(t.attachments),
                [
                    {"id": n, "subscription_id": 1, "patient_id": 5, "storage_key": f"k/{n}",
                     "file_name": raw, "uploaded_at": NOW}
                    for n, raw in enumerate(raws, start=1)
                ],
            )  # fmt: skip
        first = list(plan_files(conn, 1))
        second = list(plan_files(conn, 1))
    assert first == second
    assert [p.record_id for p in first] == list(range(1, len(raws) + 1))
    assert all(p.kind == KIND_ATTACHMENT and stays_in_the_archive(p.archive_path) for p in first)
    assert len({p.archive_path.casefold() for p in first}) == len(first)


# --- properties: cells ----------------------------------------------------------------------------


def excel_shows(stored: str) -> str:
    """The text Excel shows for a stored string: it decodes `_xHHHH_`; openpyxl does not."""
    return re.sub("_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), stored)


formula_like = st.builds(
    lambda lead, rest: lead + rest,
    st.sampled_from(["=", "+", "-", "@", "=cmd|", "\t=", " =", "=HYPERLINK(", "{=", "\r\n="]),
    st.text(alphabet=st.characters(codec=None, categories=None), max_size=60),
)


@given(st.lists(formula_like | st.text(max_size=80), min_size=1, max_size=20))
@settings(max_examples=60, deadline=None)
def test_any_text_is_written_as_text_never_as_a_formula(values: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.xlsx"
        render_workbook(
            Extraction(columns=(Column("v", "Valor"),), chunks=iter([pd.DataFrame({"v": values})])),
            path=path,
            sheet_title="Hoja",
            timezone="America/Mexico_City",
            archive_path="x.xlsx",
            overflow_dir=Path(tmp) / "overflow",
        )
        sheet = load_workbook(path).worksheets[0]
        cells = [row[0] for row in sheet.iter_rows(min_row=2, max_row=len(values) + 1)]
    assert len(cells) == len(values)
    for cell, value in zip(cells, values, strict=True):
        expected = as_the_clinic_wrote_it(value)
        if expected == "":
            assert cell.value in (None, "")
            continue
        assert cell.data_type == "s"
        assert excel_shows(cell.value) == expected


# --- properties: CFDI -----------------------------------------------------------------------------


def text_fields(record: cfdi.CfdiRecord) -> list[str]:
    return [
        str(value)
        for key, value in dataclasses.asdict(record).items()
        if key != "problems" and value is not None
    ]


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "utf-7"]  # fmt: skip


@given(
    encoding=st.sampled_from(ENCODINGS),
    declared=st.booleans(),
    value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ", min_size=1, max_size=30),
    copies=st.integers(min_value=1, max_value=50),
    where=st.sampled_from(["attribute", "text", "parameter"]),
)
@settings(max_examples=300, deadline=None)
def test_an_entity_is_never_expanded_whatever_the_encoding(
    encoding: str, declared: bool, value: str, copies: int, where: str
) -> None:
    marker = f"MARK{value}MARK"
    if where == "parameter":
        subset = f"<!ENTITY % p \"<!ENTITY e '{marker}'>\"> %p;"
    else:
        subset = f'<!ENTITY e "{marker}">'
    use = "&e;" * copies
    attribute, body = (f' Serie="{use}"', "") if where != "text" else ("", use)
    label = {"utf-8-sig": "UTF-8", "utf-16-le": "UTF-16", "utf-16-be": "UTF-16"}.get(
        encoding, encoding
    )
    declaration = f'<?xml version="1.0" encoding="{label}"?>' if declared else ""
    text = (
        f"{declaration}<!DOCTYPE cfdi:Comprobante [{subset}]>"
        f'<cfdi:Comprobante xmlns:cfdi="http://www.sat.gob.mx/cfd/4" Version="4.0"{attribute}>'
        f'<cfdi:Emisor Nombre="{use if where == "text" else "x"}"/>{body}</cfdi:Comprobante>'
    )
    data = text.encode(encoding)

    record = cfdi.parse_cfdi(data)

    assert record.problems  # refused or unreadable, never a clean record
    assert not any("MARK" in field for field in text_fields(record))


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_a_record_no_longer_than_the_file(data: bytes) -> None:
    record = cfdi.parse_cfdi(data)
    assert sum(len(field) for field in text_fields(record)) <= len(data)


@given(
    st.binary(max_size=1024)
    | st.sampled_from([codecs.BOM_UTF16_LE, codecs.BOM_UTF8 + b"<", b"<\x00"])
)
@settings(max_examples=100, deadline=None)
def test_reading_any_stored_xml_never_raises(tmp_path_factory, data: bytes) -> None:
    store = FolderStore(tmp_path_factory.getbasetemp() / "cfdi-any")
    store.put_bytes("x.xml", data)
    record = read_cfdi(store, "x.xml")
    assert isinstance(record, cfdi.CfdiRecord)
    assert read_cfdi(store, "../x.xml") is None  # a key no store can hold is a missing file
