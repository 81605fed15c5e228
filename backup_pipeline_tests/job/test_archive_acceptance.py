"""What the clinic receives, end to end through the real backup job (PRODUCT.md: the archive, the email).

Every test seeds a small clinic, files a request as the platform does, runs the real partitioned
job in process (as `backup-pipeline run` does) and reads back what was delivered: the zip from the
archives store, its workbooks with openpyxl, the email from the outbox or the loopback SendGrid.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import dagster as dg
import lxml.html
import pytest
from sqlalchemy import Engine, and_, bindparam, func, literal, select, update

from backup_pipeline.archive.verify import verify_zip
from backup_pipeline.archive.zipper import REASON_NOT_FOUND
from backup_pipeline.cli import main as cli_main
from backup_pipeline.datasets import consultations as consultations_dataset
from backup_pipeline.datasets import dental_treatments as dental_dataset
from backup_pipeline.datasets import patients as patients_dataset
from backup_pipeline.datasets import vaccinations as vaccinations_dataset
from backup_pipeline.datasets.anamnesis import parse_answer_date, parse_answer_number
from backup_pipeline.platform import tables
from backup_pipeline.rules.leeme import ARCHIVE_FOLDERS
from backup_pipeline.rules.spanish import spanish_datetime, spanish_size, to_clinic_time, zone_name
from backup_pipeline.storage.folder import FolderStore
from backup_pipeline.synthetic.seed import row_id
from backup_pipeline_tests.support.acceptance import SIGNER_EMAIL, Archive, headers
from backup_pipeline_tests.support.location import backup_job
from backup_pipeline_tests.support.platform import (
    CLOUD,
    GCS_ARCHIVES_PREFIX,
    LOCAL,
    WITH_SENDGRID,
    WORKBOOKS,
    Backends,
    Backup,
    Clinic,
    Platform,
    open_platform,
)
from backup_pipeline_tests.support.register import tu_forms
from backup_pipeline_tests.support.sendgrid import SendGridEndpoint, read_sendgrid

LINK_TTL_HOURS = 48
PATIENTS = 8

CLINICAL_WORKBOOKS = WORKBOOKS[:5]
INVOICE_REPORTS = tuple(w for w in WORKBOOKS if w.startswith("facturacion/"))
MISSING_REPORT = "archivos_no_incluidos.xlsx"
ALREADY_COMPRESSED = {"xlsx", "png", "jpg", "jpeg", "pdf"}

FORMULA_LIKE = (
    "=1+1",
    "+1",
    "-1",
    "@SUM(A1)",
    "=cmd|' /C calc'!A0",
    '=HYPERLINK("http://x","y")',
)


# --- The platform: link lifetime of 48 hours, so that the email's expiry is not the default --------


SETTINGS = {"BACKUP_LINK_TTL": str(LINK_TTL_HOURS)}


@pytest.fixture
def local(request: pytest.FixtureRequest) -> Platform:
    """SQLite, folders and an outbox: the embedded defaults' backends."""
    return open_platform(request, LOCAL, env=SETTINGS)


@pytest.fixture
def with_sendgrid(request: pytest.FixtureRequest) -> Platform:
    return open_platform(request, WITH_SENDGRID, env=SETTINGS)


def seed_clinics(platform: Platform, *, subscriptions: int = 1, seed: int = 11) -> list[Clinic]:
    return platform.seed(patients=PATIENTS, subscriptions=subscriptions, seed=seed)


def backup_of(platform: Platform, clinic: Clinic) -> tuple[Backup, Archive]:
    backup = platform.back_up(clinic)
    assert backup.delivered, (backup.outcome, backup.request.status_detail)
    return backup, platform.archive(backup)


# --- Reading the platform's rows (what the archive must reflect) -------------------------------


def live_attachments(engine: Engine, sid: int) -> list[Any]:
    a, p = tables.attachments, tables.patients
    query = (
        select(a.c.id, a.c.patient_id, a.c.storage_key, a.c.file_name)
        .join(p, and_(p.c.id == a.c.patient_id, p.c.subscription_id == sid))
        .where(a.c.subscription_id == sid, a.c.deleted_at.is_(None), p.c.deleted_at.is_(None))
        .order_by(a.c.id)
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def live_consultation_ids(engine: Engine, sid: int) -> list[int]:
    c, p = tables.consultations, tables.patients
    query = (
        select(c.c.id)
        .join(p, p.c.id == c.c.patient_id)
        .where(c.c.subscription_id == sid, c.c.deleted_at.is_(None), p.c.deleted_at.is_(None))
        .order_by(c.c.id)
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leeme_counts(leeme: str) -> dict[str, int]:
    """'(N registros)' per workbook path, as LEEME.txt's CONTENIDO section lists them."""
    lines = leeme.splitlines()
    counts = {}
    for path, description in itertools.pairwise(lines):
        found = re.search(r"\(([\d,]+) registros?\)\.$", description)
        if path.endswith(".xlsx") and found:
            counts[path] = int(found.group(1).replace(",", ""))
    return counts


def links_in(text: str) -> set[str]:
    return set(re.findall(r"(?:https?|file)://\S+", text))


def assert_no_formula_cells(archive: Archive) -> int:
    """No cell of any workbook is a formula; returns how many cells were looked at."""
    cells = 0
    for name, book in archive.workbooks.items():
        for ws in book.worksheets:
            for row in ws.iter_rows():
                for cell in row:
                    if cell.value is None:
                        continue
                    cells += 1
                    assert cell.data_type != "f", (
                        f"{name}!{ws.title}!{cell.coordinate} is a formula"
                    )
    return cells


# --- 1. The whole promise ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "backends",
    [LOCAL, pytest.param(CLOUD, marks=pytest.mark.postgres)],
    ids=["sqlite-folders-outbox", "postgresql-gcs-sendgrid"],
)
def test_a_delivered_backup_is_the_archive_and_the_email_the_product_promises(
    request, backends: Backends
):
    platform = open_platform(request, backends, env=SETTINGS)
    (clinic,) = seed_clinics(platform)

    backup, archive = backup_of(platform, clinic)

    # The request row: every column after status is filled, in the order things happened.
    row = backup.request
    for column in tables.backup_requests.columns:
        value = getattr(row, column.name)
        if column.name == "status_detail":
            assert value is None  # delivered: nothing to explain
        else:
            assert value is not None, f"backup_requests.{column.name} is empty"
    assert row.run_id == backup.outcome.run_id
    ttl = timedelta(hours=LINK_TTL_HOURS)
    assert row.requested_at <= row.started_at <= row.link_expires_at - ttl
    assert row.link_expires_at - ttl <= row.email_sent_at <= row.finished_at

    # The zip itself, read back from the archives store.
    assert len(archive.data) == row.archive_size_bytes
    assert sha256(archive.data) == row.archive_sha256
    report = verify_zip(io.BytesIO(archive.data))
    assert report.ok, report.problems  # every workbook opens with openpyxl, too
    # Every CFDI XML is opened with the hardened parser; one that does not open (the demo seeds
    # a broken one) is named, and its report row says so in its observations.
    observed = {
        r["Archivo XML"]: r["Observaciones"]
        for report_name in INVOICE_REPORTS
        for r in archive.sheet_rows(report_name)
    }
    for note in report.unreadable_cfdi:
        path = re.search(r"\('(facturacion/[^']+)'\)", note).group(1)
        assert observed[path], note
    assert report.entries == len(archive.names)
    with platform.engine.connect() as conn:
        subscription = conn.execute(
            select(tables.subscriptions).where(tables.subscriptions.c.id == clinic.subscription_id)
        ).one()
        requester_email = conn.execute(
            select(tables.users.c.email).where(tables.users.c.id == clinic.owner_id)
        ).scalar_one()
    download_name = row.archive_key.rsplit("/", 1)[1]
    local_day = to_clinic_time(row.requested_at, subscription.timezone).date()
    assert re.fullmatch(
        rf"respaldo_[a-z0-9]+(-[a-z0-9]+)*_{local_day:%Y-%m-%d}\.zip", download_name
    )
    for info in archive.zf.infolist():
        assert info.filename.isascii() or info.flag_bits & 0x800, "a non-ASCII name not in UTF-8"
        if info.filename.rsplit(".", 1)[-1].lower() in ALREADY_COMPRESSED:
            assert info.compress_type == zipfile.ZIP_STORED, info.filename

    # SHA256SUMS: `sha256sum -c` compatible, covering every other entry.
    raw_sums = archive.read("SHA256SUMS")
    assert not raw_sums.startswith(b"\xef\xbb\xbf")
    sums = dict(reversed(line.split("  ", 1)) for line in raw_sums.decode().splitlines())
    assert set(sums) == set(archive.names) - {"SHA256SUMS"}
    for path, digest in sums.items():
        assert sha256(archive.read(path)) == digest, path

    # Every workbook opens, has Spanish headers frozen with a filter, and as many rows as LEEME says.
    assert set(WORKBOOKS) <= set(archive.workbooks)
    leeme = archive.text("LEEME.txt")
    counts = leeme_counts(leeme)
    assert set(counts) == set(WORKBOOKS)
    for name in WORKBOOKS:
        ws = archive.workbooks[name].worksheets[0]
        names = headers(ws)
        assert names and all(isinstance(h, str) and h for h in names), name
        assert ws.freeze_panes == "A2", name
        assert ws.auto_filter.ref and ws.auto_filter.ref.startswith("A1:"), name
        rows = archive.sheet_rows(name)
        assert len(rows) == counts[name], name
        if name in CLINICAL_WORKBOOKS:
            assert names[:2] == ["ID paciente", "Paciente"], name
            assert all(r["ID paciente"] and r["Paciente"] for r in rows), name
    assert counts["pacientes.xlsx"] > 0 and counts["consultas.xlsx"] > 0
    assert zone_name(subscription.timezone) in leeme
    assert "America/" not in leeme  # the zone by its Spanish name, never its IANA id

    # Every live attachment is in the zip byte for byte, or listed as not included.
    stored, missing = Counter(), set()
    for attachment in live_attachments(platform.engine, clinic.subscription_id):
        if platform.files.exists(attachment.storage_key):
            stored[sha256(platform.files.get_bytes(attachment.storage_key))] += 1
        else:
            missing.add(attachment.id)
    assert stored
    zipped = Counter(sha256(archive.read(n)) for n in archive.names if n.startswith("adjuntos/"))
    assert zipped == stored
    if missing:
        listed = archive.sheet_rows(MISSING_REPORT)
        assert missing <= {r["ID del registro"] for r in listed}
    else:
        assert MISSING_REPORT not in archive.names
    with platform.engine.connect() as conn:
        cfdi = list(
            conn.execute(
                select(tables.cfdi_documents).where(
                    tables.cfdi_documents.c.subscription_id == clinic.subscription_id
                )
            )
        )
    xml_entries = [n for n in archive.names if re.match(r"facturacion/\w+/xml/", n)]
    assert len(xml_entries) == len(cfdi) > 0
    # The invoice reports name each CFDI's files as the archive holds them.
    named = set()
    for report in INVOICE_REPORTS:
        for r in archive.sheet_rows(report):
            named |= {r.get("Archivo XML"), r.get("Archivo PDF")} - {None}
    assert named == {n for n in archive.names if re.match(r"facturacion/\w+/(xml|pdf)/", n)}

    # Exactly one email, to the requester, whose two parts carry the link, expiry, size and sha256.
    (sent,) = platform.sent()
    assert sent.to == requester_email
    assert sent.message_id == row.email_message_id
    (link,) = links_in(sent.text)
    html = lxml.html.fromstring(sent.html)
    assert link in html.xpath("//a/@href")
    expiry = spanish_datetime(to_clinic_time(row.link_expires_at, subscription.timezone))
    for part in (sent.text, html.text_content()):
        assert link in part
        assert spanish_size(row.archive_size_bytes) in part
        assert row.archive_sha256 in part
        assert expiry in part
        assert subscription.name in part
        assert platform.settings.support_email in part

    if backends.mail == "sendgrid":
        endpoint: SendGridEndpoint = request.getfixturevalue("sendgrid_endpoint")
        assert [r.status for r in endpoint.recorded] == [202]  # one payload, accepted
    if backends.stores == "gcs":
        query = {name: values[0] for name, values in parse_qs(urlsplit(link).query).items()}
        assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
        assert query["X-Goog-Expires"] == str(LINK_TTL_HOURS * 3600)
        assert query["X-Goog-Credential"].startswith(SIGNER_EMAIL + "/")
        assert unquote(urlsplit(link).path).endswith(f"/{GCS_ARCHIVES_PREFIX}/{row.archive_key}")
        assert download_name in query["response-content-disposition"]
        # The emulator serves a signed URL's object (real GCS would also check the signature).
        with urllib.request.urlopen(link) as response:
            assert sha256(response.read()) == row.archive_sha256
    else:
        assert Path(unquote(urlsplit(link).path)).read_bytes() == archive.data


# --- 2. Text stays text ------------------------------------------------------------------------

# Columns whose value means something to the platform or to us (keys, hashes) keep their value.
NOT_FREE_TEXT = {"storage_key", "content_type", "sha256"}


def formula_for(*keys: int) -> str:
    return FORMULA_LIKE[sum(keys) % len(FORMULA_LIKE)]


def text_columns(table) -> list[str]:
    return [
        column.name
        for column in table.columns
        if column.type.python_type is str and column.name not in NOT_FREE_TEXT
    ]


def fill_with_formulas(engine: Engine, sid: int) -> None:
    """Every free-text column of the clinic's rows becomes one of FORMULA_LIKE.

    Patients and consultations are keyed by their own id (their workbooks show it); rows whose
    workbook shows only the patient take a value from the patient id and the column.
    """
    plan = {
        tables.patients: lambda r, i: formula_for(r.id, i),
        tables.consultations: lambda r, i: formula_for(r.id, i),
        tables.dental_treatments: lambda r, i: formula_for(r.patient_id, i),
        tables.vaccinations: lambda r, i: formula_for(r.patient_id, i),
        tables.anamnesis_answers: lambda r, i: formula_for(r.patient_id),
        tables.anamnesis_questions: lambda r, i: formula_for(r.id, i),
        tables.attachments: lambda r, i: formula_for(r.id),
    }
    with engine.begin() as conn:
        for table, value in plan.items():
            names = text_columns(table)
            rows = list(conn.execute(select(table).where(table.c.subscription_id == sid)))
            statement = (
                update(table)
                .where(table.c.id == bindparam("row_id"))
                .values({name: bindparam(f"new_{name}") for name in names})
            )
            conn.execute(
                statement,
                [
                    {"row_id": r.id} | {f"new_{n}": value(r, i) for i, n in enumerate(names)}
                    for r in rows
                ],
            )


def header_of(columns, key: str) -> str:
    return next(column.header for column in columns if column.key == key)


def test_formula_like_text_stays_text_in_every_workbook(local: Platform):
    (clinic,) = seed_clinics(local)
    sid = clinic.subscription_id
    fill_with_formulas(local.engine, sid)

    _, archive = backup_of(local, clinic)

    assert assert_no_formula_cells(archive) > 500
    assert verify_zip(io.BytesIO(archive.data)).ok
    seen: set[str] = set()

    def check(actual: Any, expected: str, where: str) -> None:
        assert actual == expected, where
        seen.add(expected)

    with local.engine.connect() as conn:

        def live(table):
            return {
                r.id: r
                for r in conn.execute(
                    select(table).where(
                        table.c.subscription_id == sid, table.c.deleted_at.is_(None)
                    )
                )
            }

        patients = live(tables.patients)
        consultations = {
            i: r for i, r in live(tables.consultations).items() if r.patient_id in patients
        }
        questions = list(
            conn.execute(
                select(tables.anamnesis_questions).where(
                    tables.anamnesis_questions.c.subscription_id == sid
                )
            )
        )

    def full_name(p) -> str:
        return " ".join(part for part in (p.last_name, p.second_last_name, p.first_name) if part)

    # Patients and consultations: each cell is the value its own row received.
    for workbook, id_header, rows_by_id, table, columns in (
        (
            "pacientes.xlsx",
            "ID paciente",
            patients,
            tables.patients,
            patients_dataset.COLUMNS,
        ),
        (
            "consultas.xlsx",
            "ID consulta",
            consultations,
            tables.consultations,
            consultations_dataset.COLUMNS,
        ),
    ):
        rows = archive.sheet_rows(workbook)
        assert {r[id_header] for r in rows} == set(rows_by_id), workbook
        keys = {c.key for c in columns}
        for row in rows:
            source = rows_by_id[row[id_header]]
            for name in text_columns(table):
                if name in keys:
                    check(row[header_of(columns, name)], getattr(source, name), workbook)
            patient = patients[source.id if table is tables.patients else source.patient_id]
            check(row["Paciente"], full_name(patient), workbook)

    # Dental treatments and vaccinations: every row of a patient got the same value per column.
    for workbook, table, columns in (
        ("tratamientos_odontologicos.xlsx", tables.dental_treatments, dental_dataset.COLUMNS),
        ("vacunacion.xlsx", tables.vaccinations, vaccinations_dataset.COLUMNS),
    ):
        rows = archive.sheet_rows(workbook)
        assert rows, workbook
        keys = {c.key for c in columns}
        for row in rows:
            pid = row["ID paciente"]
            for i, name in enumerate(text_columns(table)):
                if name in keys:
                    check(row[header_of(columns, name)], formula_for(pid, i), workbook)

    # Anamnesis: every answer cell is its patient's value; questions read back on their sheet.
    book = archive.workbooks["anamnesis.xlsx"]
    main = archive.sheet_rows("anamnesis.xlsx", 0)
    assert main
    fixed = {"ID paciente", "Paciente", "Fecha de la última respuesta"}
    for row in main:
        answers = [v for h, v in row.items() if h not in fixed and v is not None]
        assert answers
        for answer in answers:
            check(answer, formula_for(row["ID paciente"]), "anamnesis.xlsx")
    question_rows = archive.sheet_rows("anamnesis.xlsx", "Preguntas")
    assert Counter(
        (r["Sección"], r["Pregunta"], r["Tipo de respuesta"]) for r in question_rows
    ) == (Counter((q.section, q.question, q.answer_type) for q in questions))
    question_headers = headers(book.worksheets[0])[3:]
    for header in question_headers:
        assert any(header == f or header.startswith(f + " (") for f in FORMULA_LIKE), header

    # Attachments: a name Windows can hold is the entry's name, in its patient's folder.
    entries = [n for n in archive.names if n.startswith("adjuntos/")]
    for attachment in live_attachments(local.engine, sid):
        if not local.files.exists(attachment.storage_key):
            continue
        name = attachment.file_name
        if re.search(r'[<>:"/\\|?*]', name):
            continue
        pattern = re.compile(
            rf"adjuntos/[^/]* \({attachment.patient_id}\)/{re.escape(name)}( \(\d+\))?"
        )
        assert any(pattern.fullmatch(e) for e in entries), name
        seen.add(name)

    assert set(FORMULA_LIKE) <= seen  # every one of them was checked somewhere


# --- 3. Isolation ------------------------------------------------------------------------------


def mark_subscription(engine: Engine, sid: int, marker: str) -> None:
    """Put `marker` into every kind of text the clinic's backup could show."""

    def prefixed(column):
        return literal(f"{marker} ").concat(func.coalesce(column, ""))

    t = tables
    with engine.begin() as conn:
        for table, values in (
            (t.subscriptions, {"name": literal(f"Clínica {marker}")}),
            (t.users, {"full_name": prefixed(t.users.c.full_name)}),
            (
                t.patients,
                {
                    "last_name": prefixed(t.patients.c.last_name),
                    "notes": prefixed(t.patients.c.notes),
                },
            ),
            (t.consultations, {"notes": prefixed(t.consultations.c.notes)}),
            (t.dental_treatments, {"notes": prefixed(t.dental_treatments.c.notes)}),
            (t.vaccinations, {"notes": prefixed(t.vaccinations.c.notes)}),
            (t.anamnesis_questions, {"question": prefixed(t.anamnesis_questions.c.question)}),
            (t.anamnesis_answers, {"answer": prefixed(t.anamnesis_answers.c.answer)}),
            (t.attachments, {"file_name": prefixed(t.attachments.c.file_name)}),
        ):
            key = table.c.id if table is t.subscriptions else table.c.subscription_id
            conn.execute(update(table).where(key == sid).values(values))


def first_id(engine: Engine, table, sid: int, *conditions) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(table.c.id)
            .where(table.c.subscription_id == sid, *conditions)
            .order_by(table.c.id)
            .limit(1)
        ).scalar_one()


def link_across(engine: Engine, a: Clinic, b: Clinic) -> None:
    """Rows whose references cross the two subscriptions, as a platform bug could leave them."""
    t = tables
    now = datetime(2026, 1, 5, 12, 0)
    a_patient = first_id(engine, t.patients, a.subscription_id, t.patients.c.deleted_at.is_(None))
    b_patient = first_id(engine, t.patients, b.subscription_id, t.patients.c.deleted_at.is_(None))
    b_question = first_id(engine, t.anamnesis_questions, b.subscription_id)
    b_attachment_key_query = select(t.attachments.c.storage_key).where(
        t.attachments.c.subscription_id == b.subscription_id
    )
    a_id, b_id = a.subscription_id, b.subscription_id
    with engine.begin() as conn:
        b_key = conn.execute(b_attachment_key_query.limit(1)).scalar_one()
        # B's rows that point at A's patient.
        conn.execute(
            t.consultations.insert().values(
                id=row_id(b_id, 900_001),
                subscription_id=b_id,
                patient_id=a_patient,
                practitioner_user_id=b.owner_id,
                started_at=now,
                notes="MARCA_B consulta cruzada",
                created_at=now,
            )
        )
        conn.execute(
            t.attachments.insert().values(
                id=row_id(b_id, 900_001),
                subscription_id=b_id,
                patient_id=a_patient,
                storage_key=b_key,
                file_name="MARCA_B adjunto cruzado.pdf",
                uploaded_at=now,
            )
        )
        # A's rows that point at B's patient, question, user.
        conn.execute(
            t.anamnesis_answers.insert().values(
                id=row_id(a_id, 900_001),
                subscription_id=a_id,
                patient_id=a_patient,
                question_id=b_question,
                answer="respuesta a una pregunta ajena",
                answered_at=now,
            )
        )
        conn.execute(
            t.attachments.insert().values(
                id=row_id(a_id, 900_001),
                subscription_id=a_id,
                patient_id=b_patient,
                storage_key=b_key,
                file_name="adjunto de un paciente ajeno.pdf",
                uploaded_at=now,
            )
        )
        conn.execute(
            t.vaccinations.insert().values(
                id=row_id(a_id, 900_001),
                subscription_id=a_id,
                patient_id=b_patient,
                vaccine="Influenza",
                applied_on=date(2025, 11, 3),
                created_at=now,
            )
        )
        conn.execute(
            update(t.consultations)
            .where(t.consultations.c.subscription_id == a_id)
            .values(practitioner_user_id=b.owner_id)
        )
        conn.execute(
            update(t.cfdi_documents)
            .where(t.cfdi_documents.c.subscription_id == a_id)
            .values(patient_id=b_patient)
        )


def file_hashes(platform: Platform, keys: Iterable[str]) -> set[str]:
    return {sha256(platform.files.get_bytes(k)) for k in keys if k and platform.files.exists(k)}


def test_a_backup_holds_nothing_of_another_subscription(local: Platform):
    a, b = seed_clinics(local, subscriptions=2)
    mark_subscription(local.engine, a.subscription_id, "MARCA_A")
    mark_subscription(local.engine, b.subscription_id, "MARCA_B")
    link_across(local.engine, a, b)
    t = tables
    with local.engine.connect() as conn:
        b_uuids = list(
            conn.execute(
                select(t.cfdi_documents.c.uuid).where(
                    t.cfdi_documents.c.subscription_id == b.subscription_id
                )
            ).scalars()
        )
        b_keys = list(
            conn.execute(
                select(t.attachments.c.storage_key).where(
                    t.attachments.c.subscription_id == b.subscription_id
                )
            ).scalars()
        )
        b_cfdi_keys = [
            key
            for row in conn.execute(
                select(
                    t.cfdi_documents.c.xml_storage_key, t.cfdi_documents.c.pdf_storage_key
                ).where(t.cfdi_documents.c.subscription_id == b.subscription_id)
            )
            for key in row
        ]
        b_patient_ids = set(
            conn.execute(
                select(t.patients.c.id).where(t.patients.c.subscription_id == b.subscription_id)
            ).scalars()
        )
    b_hashes = file_hashes(local, b_keys + b_cfdi_keys)
    assert b_uuids and b_hashes
    # One of A's invoices (all now pointing at B's patient) lost its XML: it is reported missing.
    lost_xml = first_id(local.engine, t.cfdi_documents, a.subscription_id)
    with local.engine.connect() as conn:
        lost_key = conn.execute(
            select(t.cfdi_documents.c.xml_storage_key).where(t.cfdi_documents.c.id == lost_xml)
        ).scalar_one()
    assert local.files.delete(lost_key)

    _, archive = backup_of(local, a)

    forbidden = [b"MARCA_B"] + [u.encode() for u in b_uuids] + [u.lower().encode() for u in b_uuids]
    marked_a = set()
    for where, data in archive.blobs():
        assert "MARCA_B" not in where
        assert not any(u.upper() in where.upper() for u in b_uuids), where
        assert not any(token in data for token in forbidden), where
        assert sha256(data) not in b_hashes, f"{where} is one of the other clinic's files"
        if b"MARCA_A" in data:
            marked_a.add(where.split("!")[0])
    # The scan reads what it should: A's own marks are in its workbooks and its LEEME.
    assert {"pacientes.xlsx", "consultas.xlsx", "LEEME.txt"} <= marked_a
    assert MISSING_REPORT in archive.workbooks
    for name in archive.workbooks:
        for row in archive.sheet_rows(name):
            assert row.get("ID paciente") not in b_patient_ids, name
    for entry in archive.names:
        if entry.startswith("adjuntos/"):
            folder_id = int(re.search(r"\((\d+)\)$", entry.split("/")[1]).group(1))
            assert folder_id not in b_patient_ids
    (sent,) = local.sent()
    assert "MARCA_B" not in sent.text + sent.html + sent.subject


# --- 4. Soft-deleted rows ----------------------------------------------------------------------

DELETED_MARK = "SUPRIMIDO7Q"


def test_soft_deleted_rows_appear_nowhere(local: Platform):
    (clinic,) = seed_clinics(local)
    sid = clinic.subscription_id
    t = tables
    # One more patient goes, one with consultations and files; and one record of each kind.
    victim = first_id(
        local.engine,
        t.patients,
        sid,
        t.patients.c.deleted_at.is_(None),
        t.patients.c.id.in_(
            select(t.attachments.c.patient_id).where(t.attachments.c.deleted_at.is_(None))
        ),
        t.patients.c.id.in_(select(t.consultations.c.patient_id)),
    )
    gone = datetime(2026, 2, 1, 9, 0)
    with local.engine.begin() as conn:
        conn.execute(update(t.patients).where(t.patients.c.id == victim).values(deleted_at=gone))
        for table in (t.consultations, t.dental_treatments, t.vaccinations, t.attachments):
            one_live = (
                select(table.c.id)
                .join(t.patients, t.patients.c.id == table.c.patient_id)
                .where(
                    table.c.subscription_id == sid,
                    table.c.deleted_at.is_(None),
                    t.patients.c.deleted_at.is_(None),
                )
                .order_by(table.c.id)
                .limit(1)
                .scalar_subquery()
            )
            conn.execute(update(table).where(table.c.id == one_live).values(deleted_at=gone))
        deleted_patients = set(
            conn.execute(
                select(t.patients.c.id).where(
                    t.patients.c.subscription_id == sid, t.patients.c.deleted_at.is_not(None)
                )
            ).scalars()
        )
        # Every deleted row, and every row of a deleted patient, carries the mark.
        mark = {
            t.patients: {
                "first_name": DELETED_MARK,
                "last_name": DELETED_MARK,
                "notes": DELETED_MARK,
            },
            t.consultations: {"notes": DELETED_MARK, "reason": DELETED_MARK},
            t.dental_treatments: {"notes": DELETED_MARK},
            t.vaccinations: {"notes": DELETED_MARK},
            t.attachments: {"file_name": f"{DELETED_MARK}.pdf"},
        }
        for table, values in mark.items():
            condition = table.c.deleted_at.is_not(None)
            if table is not t.patients:
                condition = condition | table.c.patient_id.in_(deleted_patients)
            conn.execute(
                update(table).where(table.c.subscription_id == sid, condition).values(values)
            )
        conn.execute(
            update(t.anamnesis_answers)
            .where(t.anamnesis_answers.c.patient_id.in_(deleted_patients))
            .values(answer=DELETED_MARK)
        )
        deleted_keys = list(
            conn.execute(
                select(t.attachments.c.storage_key).where(
                    t.attachments.c.subscription_id == sid,
                    t.attachments.c.file_name == f"{DELETED_MARK}.pdf",
                )
            ).scalars()
        )
    deleted_hashes = file_hashes(local, deleted_keys)
    assert len(deleted_patients) >= 2 and deleted_hashes
    # An invoice of the deleted patient stays (fiscal record), but names no deleted patient,
    # not even in archivos_no_incluidos.xlsx when its PDF is gone.
    cfdi = tables.cfdi_documents
    invoice = first_id(local.engine, cfdi, sid, cfdi.c.pdf_storage_key.is_not(None))
    with local.engine.begin() as conn:
        conn.execute(update(cfdi).where(cfdi.c.id == invoice).values(patient_id=victim))
        pdf_key = conn.execute(
            select(cfdi.c.pdf_storage_key).where(cfdi.c.id == invoice)
        ).scalar_one()
    assert local.files.delete(pdf_key)

    _, archive = backup_of(local, clinic)

    for where, data in archive.blobs():
        assert DELETED_MARK not in where
        assert DELETED_MARK.encode() not in data, where
        assert sha256(data) not in deleted_hashes, f"{where} is a deleted attachment"
    assert MISSING_REPORT in archive.workbooks
    for name in archive.workbooks:
        for row in archive.sheet_rows(name):
            assert row.get("ID paciente") not in deleted_patients, name
    folders = {entry.split("/")[1] for entry in archive.names if entry.startswith("adjuntos/")}
    assert folders
    assert not any(folder.endswith(f"({pid})") for folder in folders for pid in deleted_patients)
    # What is live is all there.
    consultations = archive.sheet_rows("consultas.xlsx")
    assert sorted(r["ID consulta"] for r in consultations) == live_consultation_ids(
        local.engine, sid
    )


# --- 5. A clinic with nothing yet --------------------------------------------------------------


def test_a_clinic_with_no_data_gets_header_only_workbooks_and_a_leeme_of_zeros(local: Platform):
    """Also: the email goes to the requester's address when it is sent, not when requested."""
    sid, owner = 77, row_id(77, 1)
    created = datetime(2026, 3, 1, 15, 0)
    clinic = local.add_clinic(
        sid,
        owner_id=owner,
        name="Consultorio Recién Abierto",
        owner_email="duena@consultorio.example",
        owner_name="Dueña del consultorio",
        created_at=created,
    )

    request_id = local.file_request(clinic)
    with local.engine.begin() as conn:
        conn.execute(
            update(tables.users)
            .where(tables.users.c.id == owner)
            .values(email="nuevo-correo@consultorio.example")
        )
    backup = local.run(request_id, sid)
    archive = local.archive(backup)

    assert verify_zip(io.BytesIO(archive.data)).ok
    assert set(archive.workbooks) == set(WORKBOOKS)  # no archivos_no_incluidos.xlsx
    for name in WORKBOOKS:
        ws = archive.workbooks[name].worksheets[0]
        assert headers(ws) and all(headers(ws)), name
        assert archive.sheet_rows(name) == [], name
    assert not [n for n in archive.names if n.startswith(("adjuntos/", "textos_largos/"))]
    assert not [n for n in archive.names if re.match(r"facturacion/\w+/(xml|pdf)/", n)]
    leeme = archive.text("LEEME.txt")
    assert leeme_counts(leeme) == dict.fromkeys(WORKBOOKS, 0)
    assert "Archivos adjuntos y comprobantes copiados en total: 0 (" in leeme
    # No folder is listed: the zip has none.
    assert not [f for f in ARCHIVE_FOLDERS if f"\r\n{f}\r\n" in leeme]
    assert "no se pudieron" not in leeme
    (sent,) = local.sent()
    assert sent.to == "nuevo-correo@consultorio.example"


# --- 6. Files that are gone --------------------------------------------------------------------


def test_missing_files_are_listed_counted_and_the_backup_still_delivered(local: Platform):
    (clinic,) = seed_clinics(local)
    sid = clinic.subscription_id
    present = [a for a in live_attachments(local.engine, sid) if local.files.exists(a.storage_key)]
    removed = present[:2]
    for attachment in removed:
        assert local.files.delete(attachment.storage_key)
    with local.engine.connect() as conn:
        invoice = conn.execute(
            select(tables.cfdi_documents)
            .where(
                tables.cfdi_documents.c.subscription_id == sid,
                tables.cfdi_documents.c.pdf_storage_key.is_not(None),
            )
            .order_by(tables.cfdi_documents.c.id)
            .limit(1)
        ).one()
    assert local.files.delete(invoice.pdf_storage_key)
    gone_attachments = {
        a.id: a
        for a in live_attachments(local.engine, sid)
        if not local.files.exists(a.storage_key)
    }
    expected_missing = len(gone_attachments) + 1

    backup, archive = backup_of(local, clinic)

    assert verify_zip(io.BytesIO(archive.data)).ok
    listed = archive.sheet_rows(MISSING_REPORT)
    assert len(listed) == expected_missing
    by_record = {(r["Tipo"], r["ID del registro"]): r for r in listed}
    for attachment in gone_attachments.values():
        row = by_record[("Archivo adjunto", attachment.id)]
        path = row["Ruta prevista en el respaldo"]
        assert re.fullmatch(rf"adjuntos/[^/]+ \({attachment.patient_id}\)/[^/]+", path)
        assert path not in archive.names
        assert row["ID paciente"] == attachment.patient_id
        assert row["Motivo"] == REASON_NOT_FOUND
        # The patient by name, as the folders and workbooks name them, and what the file was.
        folder = path.split("/")[1]
        assert row["Paciente"] and folder.startswith(row["Paciente"][:20])
        assert row["Qué archivo era"].startswith("Archivo adjunto del paciente: «")
        assert " ".join(attachment.file_name.split()) in row["Qué archivo era"]
    pdf_row = by_record[("PDF de CFDI", invoice.id)]
    assert pdf_row["Qué archivo era"] == f"PDF del comprobante emitido {invoice.uuid}"
    if invoice.patient_id is not None:
        patients_rows = archive.sheet_rows("pacientes.xlsx")
        name = {r["ID paciente"]: r["Paciente"] for r in patients_rows}[invoice.patient_id]
        assert pdf_row["Paciente"] == name
    assert pdf_row["Ruta prevista en el respaldo"].startswith("facturacion/ingresos/pdf/")
    assert pdf_row["Ruta prevista en el respaldo"] not in archive.names
    assert pdf_row["Motivo"] == REASON_NOT_FOUND

    leeme = archive.text("LEEME.txt")
    assert f"{expected_missing} archivos no se pudieron copiar" in leeme
    assert MISSING_REPORT in leeme
    metadata = local.step_output_metadata(backup.outcome.run_id, "assemble_backup", "archive")
    assert metadata["missing_files"] == expected_missing
    (sent,) = local.sent()
    assert f"Archivos que no se pudieron incluir: {expected_missing}" in sent.text


# --- 7. Texts longer than a cell ---------------------------------------------------------------


def test_a_value_longer_than_a_cell_is_whole_in_a_text_file_the_cell_names(local: Platform):
    (clinic,) = seed_clinics(local)
    first, second, third, fourth = live_consultation_ids(local.engine, clinic.subscription_id)[:4]
    paragraph = "Evolución: paciente refiere mejoría 😁.\r\nSe indica control en 15 días.\n"
    long_note = (paragraph * (40_000 // len(paragraph) + 1))[:40_000]
    exactly_full = "x" * 32_767  # Excel's limit: still one cell
    emoji_over = "😁" * 16_384  # 16,384 characters, but 32,768 UTF-16 units: too long for Excel
    # Characters no cell can hold (XML 1.0 forbids them) are dropped; the rest stays.
    unholdable = "Alergia\x07 a la\x1b penicilina\ufffe"
    notes = {first: long_note, second: exactly_full, third: emoji_over, fourth: unholdable}
    c = tables.consultations
    with local.engine.begin() as conn:
        for consultation_id, value in notes.items():
            conn.execute(update(c).where(c.c.id == consultation_id).values(notes=value))

    _, archive = backup_of(local, clinic)

    rows = {r["ID consulta"]: r for r in archive.sheet_rows("consultas.xlsx")}
    assert rows[second]["Notas"] == exactly_full
    assert rows[fourth]["Notas"] == "Alergia a la penicilina"
    long_texts = [n for n in archive.names if n.startswith("textos_largos/")]
    for consultation_id in (first, third):
        cell = rows[consultation_id]["Notas"]
        assert len(cell.encode("utf-16-le")) // 2 <= 32_767
        named = [n for n in long_texts if n in cell]
        assert len(named) == 1, f"the cell does not name one text file: {cell[:200]!r}"
        assert archive.read(named[0]).decode("utf-8") == notes[consultation_id]
        # Named in Spanish after its row: the consultation's id and the column's header.
        assert named[0] == f"textos_largos/consultas/consulta_{consultation_id}_notas.txt"
    assert verify_zip(io.BytesIO(archive.data)).ok  # the text files are in SHA256SUMS too
    assert "más largos de lo que cabe en una celda" in archive.text("LEEME.txt")


# --- 8. Dates in the clinic's time zone --------------------------------------------------------


def cell_in(archive: Archive, workbook: str, id_header: str, row_id_: int, header: str):
    ws = archive.workbooks[workbook].worksheets[0]
    names = headers(ws)
    id_column, column = names.index(id_header), names.index(header)
    for row in ws.iter_rows(min_row=2):
        if row[id_column].value == row_id_:
            return row[column]
    raise AssertionError(f"no row {row_id_} in {workbook}")


def test_dates_are_real_excel_datetimes_in_the_clinics_time_zone(local: Platform):
    (clinic,) = seed_clinics(local)
    sid = clinic.subscription_id
    summer, winter = live_consultation_ids(local.engine, sid)[:2]
    patient = first_id(local.engine, tables.patients, sid, tables.patients.c.deleted_at.is_(None))
    c, p = tables.consultations, tables.patients
    with local.engine.begin() as conn:
        conn.execute(
            update(tables.subscriptions)
            .where(tables.subscriptions.c.id == sid)
            .values(timezone="America/Tijuana")
        )
        # UTC in the database: 18:30 UTC is 11:30 in Tijuana in July (PDT), 10:30 in January (PST).
        conn.execute(
            update(c).where(c.c.id == summer).values(started_at=datetime(2024, 7, 15, 18, 30))
        )
        conn.execute(
            update(c).where(c.c.id == winter).values(started_at=datetime(2024, 1, 15, 18, 30))
        )
        conn.execute(update(p).where(p.c.id == patient).values(birth_date=date(1990, 3, 10)))
    # Filed at 03:00 UTC: still the previous day in Tijuana, and the archive is named for that day.
    requested_at = (datetime.now(UTC) - timedelta(days=1)).replace(
        hour=3, minute=0, second=0, microsecond=0, tzinfo=None
    )
    request_id = local.file_request(clinic)
    with local.engine.begin() as conn:
        conn.execute(
            update(tables.backup_requests)
            .where(tables.backup_requests.c.id == request_id)
            .values(requested_at=requested_at)
        )

    backup = local.run(request_id, sid)
    archive = local.archive(backup)

    for consultation_id, local_time in (
        (summer, datetime(2024, 7, 15, 11, 30)),
        (winter, datetime(2024, 1, 15, 10, 30)),
    ):
        cell = cell_in(archive, "consultas.xlsx", "ID consulta", consultation_id, "Fecha y hora")
        assert cell.is_date and cell.data_type == "d"
        assert cell.value == local_time
    birth = cell_in(archive, "pacientes.xlsx", "ID paciente", patient, "Fecha de nacimiento")
    assert birth.is_date and birth.value == datetime(1990, 3, 10)  # a date is no instant: no shift
    assert "hora del Pacífico (Tijuana)" in archive.text("LEEME.txt")
    local_day = requested_at.date() - timedelta(days=1)
    assert backup.request.archive_key.endswith(f"_{local_day:%Y-%m-%d}.zip")


# --- 9. The verify command ---------------------------------------------------------------------


def rewrite_with_one_entry_changed(data: bytes, target: Path, changed: str) -> None:
    """A well-formed zip (good CRCs) whose one entry no longer matches SHA256SUMS."""
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(target, "w") as out,
    ):
        for info in source.infolist():
            content = source.read(info)
            if info.filename == changed:
                content = content[:-1] + bytes([content[-1] ^ 0x01])
            out.writestr(info, content)


def test_verify_cli_accepts_a_good_zip_and_names_an_altered_entry(
    local: Platform, tmp_path: Path, capsys
):
    (clinic,) = seed_clinics(local)
    _, archive = backup_of(local, clinic)
    good = tmp_path / "respaldo.zip"
    good.write_bytes(archive.data)

    assert cli_main(["verify", str(good)]) == 0
    assert "OK:" in capsys.readouterr().out

    changed = next(n for n in archive.names if n.startswith("adjuntos/"))
    bad = tmp_path / "alterado.zip"
    rewrite_with_one_entry_changed(archive.data, bad, changed)
    assert zipfile.ZipFile(bad).testzip() is None  # the zip itself is sound

    assert cli_main(["verify", str(bad)]) != 0
    out = capsys.readouterr().out
    (mismatch,) = [line for line in out.splitlines() if line.startswith("MISMATCH")]
    folder = changed.split("/")[1]
    patient_id = re.search(r"\((\d+)\)$", folder).group(1)
    assert f"entry #{archive.names.index(changed)}" in mismatch
    assert f"patient {patient_id}" in mismatch
    # Engineers' output names no patient.
    assert folder.rsplit(" (", 1)[0] not in out


# --- 10. One email per delivered request -------------------------------------------------------


@pytest.fixture
def fast_deliver_retries() -> None:
    """The deliver op retries with the job's policy, whose delay conftest.py shortens through
    BACKUP_RETRY_DELAY_SECONDS (the real one waits ~5 s)."""
    policy = backup_job.op_retry_policy
    assert policy is not None and policy.delay is not None and policy.delay < 1


def test_re_executing_a_delivered_request_never_sends_a_second_email(
    with_sendgrid: Platform, sendgrid_endpoint: SendGridEndpoint
):
    (clinic,) = seed_clinics(with_sendgrid)
    first, _ = backup_of(with_sendgrid, clinic)

    for _ in range(2):
        again = with_sendgrid.run(first.request_id, clinic.subscription_id)
        assert again.outcome.success  # nothing to do at start: the request is delivered
        assert again.request.status == "delivered"
        assert again.request.email_message_id == first.request.email_message_id
        assert again.request.archive_sha256 == first.request.archive_sha256

    assert [r.status for r in sendgrid_endpoint.recorded] == [202]


def test_a_mail_refused_once_is_retried_by_the_op_and_sent_once(
    with_sendgrid: Platform, sendgrid_endpoint: SendGridEndpoint, fast_deliver_retries
):
    (clinic,) = seed_clinics(with_sendgrid)
    sendgrid_endpoint.script([500, 202])

    backup, _ = backup_of(with_sendgrid, clinic)

    assert [r.status for r in sendgrid_endpoint.recorded] == [500, 202]
    (accepted,) = read_sendgrid(sendgrid_endpoint)
    assert backup.request.email_message_id == accepted.message_id
    retried = with_sendgrid.step_events(
        backup.outcome.run_id, "deliver_backup", dg.DagsterEventType.STEP_UP_FOR_RETRY
    )
    assert retried == 1


def test_a_deliver_op_retried_after_the_email_went_out_does_not_send_it_again(
    with_sendgrid: Platform,
    sendgrid_endpoint: SendGridEndpoint,
    fast_deliver_retries,
    monkeypatch: pytest.MonkeyPatch,
):
    (clinic,) = seed_clinics(with_sendgrid)
    real_delete_prefix = FolderStore.delete_prefix
    failures = iter([ConnectionResetError("storage hiccup while clearing staging")])

    def flaky_delete_prefix(self, prefix: str) -> int:
        failure = next(failures, None)
        if failure is not None and prefix.startswith("staging/"):
            raise failure
        return real_delete_prefix(self, prefix)

    monkeypatch.setattr(FolderStore, "delete_prefix", flaky_delete_prefix)

    backup, _ = backup_of(with_sendgrid, clinic)

    assert [r.status for r in sendgrid_endpoint.recorded] == [202]
    assert backup.request.email_message_id == sendgrid_endpoint.recorded[0].message_id
    retried = with_sendgrid.step_events(
        backup.outcome.run_id, "deliver_backup", dg.DagsterEventType.STEP_UP_FOR_RETRY
    )
    assert retried == 1
    assert not list(with_sendgrid.archives.list("staging/"))


# --- 11. What the clinic reads: typed, decoded, Mexican Spanish, "usted" -----------------------


def test_the_clinic_reads_typed_answers_decoded_codes_and_mexican_spanish_said_usted(
    local: Platform,
):
    (clinic,) = seed_clinics(local)
    sid = clinic.subscription_id
    a, q, p = tables.anamnesis_answers, tables.anamnesis_questions, tables.patients
    with local.engine.begin() as conn:
        # The latest answer of a live patient to a date question: one that does not parse.
        odd = conn.execute(
            select(a.c.id, a.c.patient_id, q.c.question)
            .join(q, q.c.id == a.c.question_id)
            .join(p, and_(p.c.id == a.c.patient_id, p.c.deleted_at.is_(None)))
            .where(a.c.subscription_id == sid, q.c.answer_type == "date")
            .order_by(a.c.answered_at.desc(), a.c.id.desc())
            .limit(1)
        ).one()
        conn.execute(update(a).where(a.c.id == odd.id).values(answer="hace como un año"))
        unknown_regime = conn.execute(
            select(p.c.id).where(p.c.subscription_id == sid, p.c.deleted_at.is_(None)).limit(1)
        ).scalar_one()
        conn.execute(update(p).where(p.c.id == unknown_regime).values(tax_regime="999"))

    _, archive = backup_of(local, clinic)

    # Anamnesis: a date question's answers are date cells (dd/mm/yyyy), a number question's
    # number cells; the answer that does not parse is there as written; yes/no as stored.
    types = {r["Pregunta"]: r["Tipo de respuesta"] for r in archive.sheet_rows("anamnesis.xlsx", 1)}
    sheet = archive.workbooks["anamnesis.xlsx"].worksheets[0]
    names = headers(sheet)
    seen = Counter()
    for index, header in enumerate(names):
        kind = next((t for question, t in types.items() if header.startswith(question)), None)
        for row in sheet.iter_rows(min_row=2):
            cell = row[index]
            if cell.value is None:
                continue
            if kind == "Fecha":
                assert cell.is_date or parse_answer_date(cell.value) is None, cell.value
                if cell.is_date:
                    assert cell.number_format == "dd/mm/yyyy"
                    seen["date"] += 1
            elif kind == "Número":
                if isinstance(cell.value, str):
                    assert parse_answer_number(cell.value) is None, cell.value
                else:
                    seen["number"] += 1
            elif kind == "Sí/No":
                assert isinstance(cell.value, str) and cell.data_type == "s", cell.value
                seen["yes_no"] += cell.value in {"Sí", "No"}
    assert seen["date"] and seen["number"] and seen["yes_no"]
    odd_row = next(
        r for r in archive.sheet_rows("anamnesis.xlsx") if r["ID paciente"] == odd.patient_id
    )
    assert [v for k, v in odd_row.items() if k.startswith(odd.question)] == ["hace como un año"]

    # SAT codes with their description, in the patients' workbook and the invoice reports alike.
    regimes = {r["ID paciente"]: r["Régimen fiscal"] for r in archive.sheet_rows("pacientes.xlsx")}
    assert regimes.pop(unknown_regime) == "999"  # an unknown code, as written
    assert any(regimes.values())
    for value in filter(None, regimes.values()):
        assert re.fullmatch(r"6\d\d - \S.+", value), value
    decoded = Counter()
    for report_name in INVOICE_REPORTS:
        for r in archive.sheet_rows(report_name):
            for header in ("Régimen fiscal emisor", "Uso CFDI", "Tipo de comprobante",
                           "Forma de pago", "Método de pago"):  # fmt: skip
                if r[header] is not None and " - " in r[header]:
                    decoded[header] += 1
    assert set(decoded) == {
        "Régimen fiscal emisor", "Uso CFDI", "Tipo de comprobante", "Forma de pago",
        "Método de pago",
    }  # fmt: skip

    # Mexican Spanish from CLDR: dates, the zone's Spanish name, es_MX numbers and sizes.
    leeme = archive.text("LEEME.txt")
    zone = zone_name("America/Mexico_City")
    assert re.search(
        rf"Generado el \d{{1,2}} de [a-z]+ de \d{{4}}, \d\d:\d\d, {re.escape(zone)}\.", leeme
    )
    assert re.search(
        r"Archivos adjuntos y comprobantes copiados en total: [\d,]+ \([\d,.]+ (kB|MB|GB)\)",
        leeme,
    )
    (sent,) = local.sent()
    assert f", {zone}" in sent.text and "\u00a0" not in sent.text
    for text in (leeme, sent.text, sent.html):
        assert "America/" not in text

    # LEEME's sections, and every folder the archive has explained in its contents.
    for heading in ("INFORMACIÓN CONFIDENCIAL", "FECHAS Y HORAS", "CONTENIDO",
                    "NOMBRES DE LOS ARCHIVOS", "CÓMO COMPROBAR QUE EL RESPALDO ESTÁ COMPLETO"):  # fmt: skip
        assert f"\r\n{heading}\r\n" in leeme, heading
    assert "tal como están escritas en el XML" in leeme
    listed_workbooks = leeme_counts(leeme)
    for name in archive.names:
        if "/" in name and name not in listed_workbooks:
            folder = next((f for f in ARCHIVE_FOLDERS if name.startswith(f)), None)
            assert folder is not None, name
            assert f"\r\n{folder}\r\n    " in leeme, folder
    # And only the folders it has.
    for folder in ARCHIVE_FOLDERS:
        if f"\r\n{folder}\r\n    " in leeme:
            assert any(name.startswith(folder) for name in archive.names), folder

    # One register: nothing the clinic receives says "tú".
    texts = {"LEEME.txt": leeme, "subject": sent.subject, "text": sent.text, "html": sent.html}
    for name, book in archive.workbooks.items():
        for ws in book.worksheets:
            texts[f"{name}!{ws.title}"] = " ".join([ws.title, *map(str, headers(ws))])
    for where, text in texts.items():
        assert tu_forms(text) == [], where
