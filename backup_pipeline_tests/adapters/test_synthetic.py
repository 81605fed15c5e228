"""Synthetic clinics: deterministic, isolated per subscription, Mexican identifiers, valid files and CFDI."""

from __future__ import annotations

import hashlib
import random
import re
import struct
import zlib
from collections import Counter
from datetime import date, datetime
from decimal import Decimal
from io import BytesIO

import pytest
from lxml import etree
from sqlalchemy import Engine, create_engine, func, select

from backup_pipeline.platform import tables
from backup_pipeline.resources.storage import open_store
from backup_pipeline.rules.cfdi import PROBLEM_TOTALS_PREFIX, parse_cfdi, totals_difference
from backup_pipeline.storage import ObjectStore
from backup_pipeline.synthetic import (
    ID_BLOCK,
    PROFILES,
    SeedSummary,
    cfdi_xml,
    file_backup_request,
    names,
    seed_platform,
)
from backup_pipeline.synthetic import files as synthetic_files
from backup_pipeline.synthetic.cfdi_xml import CFDI33_NS, CFDI40_NS, TFD_NS

NOW = datetime(2026, 3, 1, 12, 0)
FEW = 12  # patients: enough for every planted edge case, fast on PostgreSQL


def _platform(url: str) -> Engine:
    engine = create_engine(url)
    tables.metadata.create_all(engine)
    return engine


def _store(tmp_path, name: str) -> ObjectStore:
    return open_store((tmp_path / name).as_uri())


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _digest(engine: Engine, store: ObjectStore) -> str:
    """One hash over every platform row (by id) and every stored object's key and bytes."""
    digest = hashlib.sha256()
    with engine.connect() as conn:
        for table in tables.PLATFORM_TABLES:
            for row in conn.execute(select(table).order_by(table.c.id)):
                digest.update(repr([_plain(v) for v in row]).encode())
    for info in sorted(store.list("subscriptions/"), key=lambda i: i.key):
        digest.update(info.key.encode() + hashlib.sha256(store.get_bytes(info.key)).digest())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def clinic(tmp_path_factory) -> tuple[Engine, ObjectStore, SeedSummary]:
    """The small profile seeded once on SQLite; content does not depend on the backend (see below)."""
    folder = tmp_path_factory.mktemp("small_clinic")
    engine = _platform(f"sqlite:///{folder / 'platform.db'}")
    store = _store(folder, "files")
    summary = seed_platform(engine, store, profile="small", seed=7, now=NOW)
    return engine, store, summary


def _rows(engine: Engine, table, *where):
    with engine.connect() as conn:
        return conn.execute(select(table).where(*where).order_by(table.c.id)).mappings().all()


# --- backend behaviour (SQLite and PostgreSQL) --------------------------------------------------


def test_same_seed_gives_the_same_rows_and_files_on_every_backend(db_url, tmp_path):
    engine = _platform(db_url)
    store = _store(tmp_path, "a")
    summary = seed_platform(engine, store, patients=FEW, seed=3, now=NOW)
    reference = _platform(f"sqlite:///{tmp_path / 'reference.db'}")
    seed_platform(reference, _store(tmp_path, "b"), patients=FEW, seed=3, now=NOW)
    other = _platform(f"sqlite:///{tmp_path / 'other.db'}")
    seed_platform(other, _store(tmp_path, "c"), patients=FEW, seed=4, now=NOW)

    assert _digest(engine, store) == _digest(reference, _store(tmp_path, "b"))
    assert _digest(engine, store) != _digest(other, _store(tmp_path, "c"))
    assert summary.file_bytes == sum(i.size for i in store.list("subscriptions/"))


def test_subscriptions_never_share_ids_and_reseeding_an_id_is_refused(db_url, tmp_path):
    engine = _platform(db_url)
    store = _store(tmp_path, "files")
    first = seed_platform(engine, store, patients=FEW, subscriptions=2, now=NOW)
    second = seed_platform(engine, store, patients=FEW, first_subscription_id=3, now=NOW)
    assert first.subscription_ids + second.subscription_ids == [1, 2, 3]

    for table in tables.PLATFORM_TABLES:
        if table is tables.subscriptions:
            continue
        for row in _rows(engine, table):
            assert row["id"] // ID_BLOCK == row["subscription_id"], table.name
    checks = (
        (tables.consultations, "patient_id", tables.patients),
        (tables.consultations, "practitioner_user_id", tables.users),
        (tables.dental_treatments, "consultation_id", tables.consultations),
        (tables.anamnesis_answers, "question_id", tables.anamnesis_questions),
        (tables.attachments, "patient_id", tables.patients),
        (tables.cfdi_documents, "patient_id", tables.patients),
        (tables.backup_requests, "requested_by_user_id", tables.users),
    )
    with engine.connect() as conn:
        for child, column, parent in checks:
            crossing = conn.execute(
                select(func.count())
                .select_from(child.join(parent, child.c[column] == parent.c.id))
                .where(child.c.subscription_id != parent.c.subscription_id)
            ).scalar()
            assert crossing == 0, f"{child.name}.{column}"
    with pytest.raises(ValueError, match="already exist"):
        seed_platform(engine, store, patients=FEW, first_subscription_id=2, now=NOW)


def test_counts_scale_with_patients_in_the_profile_ratios(db_url, tmp_path):
    engine = _platform(db_url)
    store = _store(tmp_path, "files")
    ten = seed_platform(engine, store, profile="large", patients=10, now=NOW)
    twenty = seed_platform(
        engine, store, profile="large", patients=20, first_subscription_id=2, now=NOW
    )
    large = PROFILES["large"]

    for summary, n in ((ten, 10), (twenty, 20)):
        assert summary.counts["patients"] == n
        assert summary.counts["consultations"] == round(large.consultations_per_patient * n)
        assert summary.counts["dental_treatments"] == round(large.dental_treatments_per_patient * n)
        assert summary.counts["anamnesis_answers"] == round(large.anamnesis_answers_per_patient * n)
        assert summary.counts["attachments"] == round(large.attachments_per_patient * n)
        assert summary.counts["cfdi_documents"] == round(large.cfdi_per_patient * n)
    with engine.connect() as conn:
        per_subscription = dict(
            conn.execute(
                select(tables.consultations.c.subscription_id, func.count()).group_by(
                    tables.consultations.c.subscription_id
                )
            ).all()
        )
    assert per_subscription == {1: 100, 2: 200}


def test_file_backup_request_inserts_a_pending_row_in_the_subscriptions_id_block(db_url, tmp_path):
    engine = _platform(db_url)
    summary = seed_platform(engine, _store(tmp_path, "files"), patients=FEW, now=NOW)
    owner = summary.user_ids[1][0]
    when = datetime(2026, 3, 2, 9, 30)

    first = file_backup_request(engine, subscription_id=1, user_id=owner, requested_at=when)
    second = file_backup_request(engine, subscription_id=1, user_id=owner)

    assert second == first + 1
    assert first // ID_BLOCK == 1
    (row,) = _rows(engine, tables.backup_requests, tables.backup_requests.c.id == first)
    assert (row["status"], row["requested_by_user_id"], row["requested_at"]) == (
        "pending",
        owner,
        when,
    )
    assert row["started_at"] is None and row["archive_key"] is None


# --- content (the small profile, once) ------------------------------------------------------


def test_seeding_leaves_no_pending_request_and_authorised_users_first(clinic):
    engine, _, summary = clinic
    statuses = {r["status"] for r in _rows(engine, tables.backup_requests)}
    assert "pending" not in statuses and "running" not in statuses
    users = {r["id"]: r for r in _rows(engine, tables.users)}
    (sid,) = summary.subscription_ids
    owner, admin = summary.user_ids[sid]
    assert users[owner]["role"] == "owner" and users[admin]["role"] == "admin"
    for user_id in summary.user_ids[sid]:
        assert users[user_id]["is_active"] and users[user_id]["can_request_backup"]
    roles = Counter(summary.user_roles[sid].values())
    assert roles == {"owner": 1, "admin": 1, "staff": 3, "inactive": 1}
    for user_id, label in summary.user_roles[sid].items():
        assert users[user_id]["is_active"] == (label != "inactive")
        assert users[user_id]["can_request_backup"] == (label in ("owner", "admin", "inactive"))
        assert users[user_id]["email"].endswith(("@example.com", "@example.org"))


def test_curp_and_rfc_follow_the_official_patterns_and_the_patients_data(clinic):
    engine, _, _ = clinic
    patients = _rows(engine, tables.patients)
    with_curp = [p for p in patients if p["curp"]]
    with_rfc = [p for p in patients if p["rfc"]]
    assert len(with_curp) > len(patients) / 2 and with_rfc
    for p in with_curp:
        curp = p["curp"]
        assert names.CURP_PATTERN.fullmatch(curp), curp
        assert curp[4:10] == p["birth_date"].strftime("%y%m%d")
        if p["sex"] is not None:  # sex is sometimes not captured; the CURP still holds it
            assert curp[10] == {"F": "M", "M": "H"}[p["sex"]]
        assert curp[16].isdigit() == (p["birth_date"].year < 2000)
        assert curp[17] == names.curp_check_digit(curp[:17])
    for p in with_rfc:
        assert names.RFC_PERSONA_FISICA_PATTERN.fullmatch(p["rfc"]), p["rfc"]
        assert p["rfc"][4:10] == p["birth_date"].strftime("%y%m%d")
        assert p["rfc"][-1] == names.rfc_check_digit(p["rfc"][:-1])
    (subscription,) = _rows(engine, tables.subscriptions)
    assert names.RFC_PERSONA_MORAL_PATTERN.fullmatch(subscription["rfc"])


def test_check_digits_match_published_examples():
    # RENAPO's and SAT's own examples: HEGG560427MVZRRL04 and GODE561231GR8.
    assert names.curp_check_digit("HEGG560427MVZRRL0") == "4"
    assert names.rfc_check_digit("GODE561231GR") == "8"
    person = names.Person("María de los Ángeles", "de la Cruz", "Ñúñez", "F", date(2001, 4, 7))
    assert names.curp_for(person, "DF", random.Random(0))[:16] == "CUXA010407MDFRXN"


def test_patients_look_mexican_and_every_nullable_column_has_nulls(clinic):
    engine, _, _ = clinic
    patients = _rows(engine, tables.patients)
    text = " ".join(f"{p['first_name']} {p['last_name']} {p['second_last_name']}" for p in patients)
    assert re.search(r"[áéíóúÁÉÍÓÚ]", text) and re.search(r"[ñÑ]", text)
    assert any(p["last_name"] and not p["second_last_name"] for p in patients)
    for p in patients:
        for phone in (p["phone"], p["mobile"]):
            assert phone is None or re.fullmatch(r"\+52 \d{2,3} \d{3,4} \d{4}", phone)
        assert p["postal_code"] is None or re.fullmatch(r"\d{5}", p["postal_code"])
        assert p["email"] is None or p["email"].endswith(("@example.com", "@example.org"))
    assert any("\n" in (p["notes"] or "") for p in patients)
    for table in (tables.patients, tables.consultations, tables.dental_treatments, tables.vaccinations,
                  tables.attachments, tables.cfdi_documents, tables.anamnesis_answers):  # fmt: skip
        rows = _rows(engine, table)
        for column in table.columns:
            if column.nullable and not column.primary_key:
                values = [r[column.name] for r in rows]
                assert None in values, f"{table.name}.{column.name} is never NULL"
                assert any(v is not None for v in values), (
                    f"{table.name}.{column.name} is always NULL"
                )


def test_soft_deleted_patients_keep_their_records_elsewhere(clinic):
    engine, _, _ = clinic
    deleted = [p["id"] for p in _rows(engine, tables.patients) if p["deleted_at"] is not None]
    assert deleted
    for table in (tables.consultations, tables.dental_treatments, tables.vaccinations,
                  tables.attachments, tables.anamnesis_answers):  # fmt: skip
        assert _rows(engine, table, table.c.patient_id.in_(deleted)), table.name
        if "deleted_at" in table.c:
            assert _rows(engine, table, table.c.deleted_at.is_not(None)), table.name


def test_retired_question_keeps_answers_and_second_answers_differ(clinic):
    engine, _, _ = clinic
    questions = _rows(engine, tables.anamnesis_questions)
    assert 25 <= len(questions) <= 30
    assert len({q["section"] for q in questions}) >= 4
    assert sorted(q["position"] for q in questions) == list(range(1, len(questions) + 1))
    (retired,) = [q for q in questions if not q["is_active"]]
    assert _rows(
        engine, tables.anamnesis_answers, tables.anamnesis_answers.c.question_id == retired["id"]
    )
    answers: dict[tuple[int, int], list] = {}
    for a in _rows(engine, tables.anamnesis_answers):
        answers.setdefault((a["patient_id"], a["question_id"]), []).append(a)
    repeated = [
        sorted(rows, key=lambda a: a["answered_at"]) for rows in answers.values() if len(rows) > 1
    ]
    assert repeated
    for first, later in (rows[:2] for rows in repeated):
        assert later["answered_at"] > first["answered_at"]
        assert later["answer"] != first["answer"]


def test_clinical_records_use_real_codes_and_the_clinics_own_practitioners(clinic):
    engine, _, _ = clinic
    users = {u["id"] for u in _rows(engine, tables.users)}
    consultations = _rows(engine, tables.consultations)
    codes = {c["diagnosis_code"] for c in consultations} - {None}
    assert {"K02.1", "K05.1"} & codes and all(re.fullmatch(r"[A-Z]\d{2}(\.\d)?", c) for c in codes)
    assert {c["practitioner_user_id"] for c in consultations} - {None} <= users
    weights = [c["weight_kg"] for c in consultations if c["weight_kg"] is not None]
    assert weights and all(isinstance(w, Decimal) for w in weights)
    treatments = _rows(engine, tables.dental_treatments)
    teeth = {t["tooth_fdi"] for t in treatments}
    assert None in teeth
    fdi = {q * 10 + p for q in (1, 2, 3, 4) for p in range(1, 9)} | {q * 10 + p for q in (5, 6, 7, 8) for p in range(1, 6)}  # fmt: skip
    assert teeth - {None} <= fdi
    assert any(t["price"] is not None and t["price"] % 1 for t in treatments)  # some cents
    vaccines = {v["vaccine"] for v in _rows(engine, tables.vaccinations)}
    assert vaccines & {"BCG", "Influenza", "Td", "COVID-19", "Hepatitis B"}


def _check_png(data: bytes) -> None:
    assert data.startswith(synthetic_files.PNG_SIGNATURE)
    position, idat, header = 8, b"", None
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        position += 12 + length
    assert kind == b"IEND"
    width, height, _, colour = struct.unpack(">IIBB", header[:10])
    assert len(zlib.decompress(idat)) == height * (1 + width * (3 if colour == 2 else 1))


def _check_pdf(data: bytes) -> None:
    assert data.startswith(synthetic_files.PDF_HEADER) and data.rstrip().endswith(b"%%EOF")
    offset = int(data.rsplit(b"startxref", 1)[1].split()[0])
    assert data[offset : offset + 4] == b"xref"


def test_attachment_files_are_valid_and_match_their_recorded_size_and_hash(clinic):
    engine, store, _ = clinic
    rows = _rows(engine, tables.attachments)
    missing = [r for r in rows if not store.exists(r["storage_key"])]
    assert missing and len(missing) < len(rows) / 5
    assert any(r["deleted_at"] for r in rows) and any(r["sha256"] is None for r in rows)
    kinds = Counter()
    for row in rows:
        if row in missing:
            continue
        assert re.fullmatch(r"subscriptions/\d+/attachments/[0-9a-f-]{36}", row["storage_key"])
        data = store.get_bytes(row["storage_key"])
        if row["sha256"] is not None:
            assert (row["size_bytes"], row["sha256"]) == (
                len(data),
                hashlib.sha256(data).hexdigest(),
            )
        if data.startswith(synthetic_files.PNG_SIGNATURE):
            _check_png(data)
            kinds["png"] += 1
        elif data.startswith(synthetic_files.JPEG_SOI):
            assert data.endswith(b"\xff\xd9")
            kinds["jpeg"] += 1
        else:
            _check_pdf(data)
            kinds["pdf"] += 1
    assert set(kinds) == {"png", "jpeg", "pdf"}
    file_names = [r["file_name"] for r in rows]
    assert {"../../etc/passwd", "CON.txt", "nombre con espacios .pdf"} <= set(file_names)
    assert any(ord(c) > 0xFFFF for name in file_names for c in name)  # an emoji
    per_patient = Counter((r["patient_id"], r["file_name"]) for r in rows)
    assert max(per_patient.values()) >= 2  # one patient uploaded two files with one name


def test_tiny_jpeg_and_sized_files_are_well_formed():
    out = BytesIO()
    synthetic_files.write_jpeg(out, random.Random(1), 150_000)
    data = out.getvalue()
    assert abs(len(data) - 150_000) < 8
    # The tiny JPEG's header and image, with comment segments between them.
    assert data.startswith(synthetic_files.TINY_JPEG[:20])
    assert data.endswith(synthetic_files.TINY_JPEG[20:])
    out = BytesIO()
    synthetic_files.write_pdf(out, random.Random(1), 80_000, "Receta médica", ["Iñaki (prueba) \\"])
    _check_pdf(out.getvalue())
    assert abs(len(out.getvalue()) - 80_000) < 1_000
    out = BytesIO()
    synthetic_files.write_png(out, random.Random(1), 300_000, colour=True)
    _check_png(out.getvalue())


def test_cfdi_parse_with_their_namespaces_and_stamp_except_the_broken_one(clinic):
    engine, store, _ = clinic
    rows = _rows(engine, tables.cfdi_documents)
    broken, mismatched, kinds, currencies = [], [], Counter(), Counter()
    for row in rows:
        data = store.get_bytes(row["xml_storage_key"])
        try:
            root = etree.fromstring(data)
        except etree.XMLSyntaxError:
            broken.append(row)
            continue
        assert root.tag in (f"{{{CFDI40_NS}}}Comprobante", f"{{{CFDI33_NS}}}Comprobante")
        version = root.get("Version")
        assert root.nsmap["cfdi"] == (CFDI40_NS if version == "4.0" else CFDI33_NS)
        ns = {"cfdi": root.nsmap["cfdi"], "tfd": TFD_NS}
        (stamp,) = root.findall("cfdi:Complemento/tfd:TimbreFiscalDigital", ns)
        if stamp.get("UUID") != row["uuid"]:
            mismatched.append(row)
        assert root.find("cfdi:Emisor", ns).get("Rfc") and root.find("cfdi:Receptor", ns).get(
            "UsoCFDI"
        )
        kind = root.get("TipoDeComprobante")
        kinds[(kind, version)] += 1
        currencies[root.get("Moneda")] += 1
        if kind == "P":
            assert (root.get("SubTotal"), root.get("Moneda")) == ("0", "XXX")
        if root.get("Moneda") == "USD":
            assert Decimal(root.get("TipoCambio")) > 1
        if version == "4.0":
            assert root.find("cfdi:Receptor", ns).get("DomicilioFiscalReceptor")
        if row["direction"] == "issued":
            assert store.get_bytes(row["pdf_storage_key"]).startswith(b"%PDF-")
        else:
            assert row["pdf_storage_key"] is None
    assert len(broken) == 1 and len(mismatched) == 1
    assert {k for k, _ in kinds} == {"I", "E", "P"} and {v for _, v in kinds} == {"3.3", "4.0"}
    assert currencies["USD"] >= 1
    cancelled = [r for r in rows if r["status"] == "cancelado"]
    assert cancelled and all(r["cancelled_at"] for r in cancelled)
    assert all(r["cancelled_at"] is None for r in rows if r["status"] == "vigente")
    assert any(r["patient_id"] for r in rows)
    assert b"Retenciones" in b"".join(store.get_bytes(r["xml_storage_key"]) for r in rows)


@pytest.mark.parametrize("version", ["3.3", "4.0"])
def test_synthetic_cfdi_with_local_taxes_add_up_to_their_total(version):
    party = cfdi_xml.Party("EKU9003173C9", "ESCUELA KEMPER URGATE", "601", "37000")
    stay = cfdi_xml.Concept("90111800", "DAY", "Hospedaje", Decimal(3), Decimal("1234.57"))
    fees = cfdi_xml.Concept(
        "85121800", "E48", "Honorarios", Decimal(1), Decimal("3333.33"), withhold=True
    )
    invoice = cfdi_xml.Invoice(
        version=version, kind="I", serie="A", folio="1", issued_at=datetime(2023, 5, 1, 10),
        stamped_at=datetime(2023, 5, 1, 10, 1), issuer=party, receiver=party, use="G03",
        concepts=[stay, fees], uuid="8502C8A6-1AA1-42AA-8668-BB48CFC1603B", payment_form="03",
        payment_method="PUE",
        local_taxes=[cfdi_xml.LocalTax("ISH", Decimal("3.00")), cfdi_xml.LocalTax("Cedular", Decimal("2.00"), withheld=True)],
    )  # fmt: skip

    xml = cfdi_xml.build_cfdi(invoice, random.Random(1))
    record = parse_cfdi(xml)

    assert record.version == version
    assert record.impuestos_locales_trasladados == Decimal("211.11")  # 3% of 7037.04
    assert record.impuestos_locales_retenidos == Decimal("140.74")  # 2% of 7037.04
    assert totals_difference(record) == 0 and record.problems == ()
    assert record.total == cfdi_xml.invoice_total(invoice)
    root = etree.fromstring(xml)
    (local,) = root.findall(
        f"{{{root.nsmap['cfdi']}}}Complemento/{{{cfdi_xml.IMPLOCAL_NS}}}ImpuestosLocales"
    )
    assert local.get("version") == "1.0"
    assert cfdi_xml.IMPLOCAL_NS in root.get(f"{{{cfdi_xml.XSI_NS}}}schemaLocation")


def test_a_seeded_clinic_has_local_tax_expenses_in_3_3_and_4_0_and_every_cfdi_adds_up(tmp_path):
    engine = _platform(f"sqlite:///{tmp_path / 'platform.db'}")
    store = _store(tmp_path, "files")
    seed_platform(engine, store, patients=120, seed=7, now=NOW)

    local_versions, unbalanced = Counter(), []
    for row in _rows(engine, tables.cfdi_documents):
        record = parse_cfdi(store.get_bytes(row["xml_storage_key"]))
        if record.impuestos_locales_trasladados is not None:
            assert row["direction"] == "received"
            local_versions[record.version] += 1
        if any(p.startswith(PROBLEM_TOTALS_PREFIX) for p in record.problems):
            unbalanced.append(row["id"])
    assert set(local_versions) == {"3.3", "4.0"}
    assert unbalanced == []


def test_timestamps_are_naive_utc_and_never_after_now(clinic):
    engine, _, _ = clinic
    five_years_ago = NOW.replace(year=NOW.year - 5)
    for table in tables.PLATFORM_TABLES:
        for row in _rows(engine, table):
            for column in table.columns:
                value = row[column.name]
                if isinstance(value, datetime):
                    assert value.tzinfo is None and value <= NOW, f"{table.name}.{column.name}"
    for p in _rows(engine, tables.patients):
        assert five_years_ago <= p["created_at"] and (p["deleted_at"] or NOW) >= p["created_at"]
