"""The five clinical datasets, extracted from SQLite and PostgreSQL and read back from the workbook."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from openpyxl import load_workbook
from openpyxl.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import Connection, Table, Text, create_engine, text

from backup_pipeline.datasets import (
    anamnesis,
    consultations,
    dental_treatments,
    patients,
    vaccinations,
)
from backup_pipeline.datasets.anamnesis import PatientNames, Question, latest_answers_by_patient
from backup_pipeline.datasets.base import Dataset, ExtractContext
from backup_pipeline.datasets.workbook import render_workbook
from backup_pipeline.platform import tables as t
from backup_pipeline.storage.folder import FolderStore

CLINIC, OTHER_CLINIC, EMPTY_CLINIC, FORMULA_CLINIC = 1, 2, 3, 4
ZONE = "America/Mexico_City"
T0 = datetime(2026, 1, 15, 6, 30)  # UTC; 00:30 in Mexico City
CLINICAL = (
    patients.DATASET,
    anamnesis.DATASET,
    consultations.DATASET,
    dental_treatments.DATASET,
    vaccinations.DATASET,
)

JUAN, ANA, DELETED, MARIA, STRANGER = 101, 102, 103, 104, 201
LIVE_NAMES = {JUAN: "Pérez García Juan", ANA: "Ana", MARIA: "López María"}


def patient(pid: int, sub: int, first: str, **fields: object) -> dict[str, object]:
    columns = [c.name for c in t.patients.columns]
    row: dict[str, object] = dict.fromkeys(columns)
    row.update(id=pid, subscription_id=sub, first_name=first, created_at=T0, **fields)
    return row


def with_nulls(table: Table, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {c.name: None for c in table.columns if c.server_default is None}
    row.update(fields)
    return row


def insert_clinics(conn: Connection) -> None:
    conn.execute(
        t.subscriptions.insert(),
        [
            {
                "id": sub,
                "name": f"Clínica {sub}",
                "timezone": ZONE,
                "status": "active",
                "created_at": T0,
            }
            for sub in (CLINIC, OTHER_CLINIC, EMPTY_CLINIC, FORMULA_CLINIC)
        ],
    )
    conn.execute(
        t.users.insert(),
        [
            {"id": 10, "subscription_id": CLINIC, "email": "ana@example.test", "full_name": "Dra. Ana Ruiz",
             "role": "owner", "is_active": True, "can_request_backup": True, "created_at": T0},
            {"id": 20, "subscription_id": OTHER_CLINIC, "email": "otro@example.test", "full_name": "Dr. Ajeno",
             "role": "owner", "is_active": True, "can_request_backup": True, "created_at": T0},
        ],
    )  # fmt: skip


def insert_clinical_rows(conn: Connection) -> None:
    insert_clinics(conn)
    conn.execute(
        t.patients.insert(),
        [
            patient(
                JUAN, CLINIC, "Juan", last_name="Pérez", second_last_name="García",
                birth_date=date(1980, 5, 17), sex="M", curp="PEGJ800517HDFRRN09", rfc="PEGJ800517AB1",
                email="juan@example.test", phone="5555555555", mobile="5511111111", street="Av. Juárez",
                exterior_number="10", interior_number="3B", neighborhood="Centro",
                municipality="Cuauhtémoc", state="Ciudad de México", postal_code="06000", country="México",
                tax_regime="605", tax_postal_code="06000", blood_type="O+", allergies="Penicilina",
                notes="Paciente puntual", updated_at=datetime(2026, 2, 1, 18, 0),
            ),
            patient(ANA, CLINIC, "Ana"),  # no last name, every nullable column NULL
            patient(DELETED, CLINIC, "Borrado", last_name="Paciente", deleted_at=T0),
            patient(MARIA, CLINIC, "María", last_name="López", sex="F"),
            patient(STRANGER, OTHER_CLINIC, "Ajeno", last_name="Otro"),
        ],
    )  # fmt: skip
    c = t.consultations
    conn.execute(
        c.insert(),
        [
            with_nulls(
                c, id=1, subscription_id=CLINIC, patient_id=JUAN, practitioner_user_id=10, started_at=T0,
                reason="Dolor de muela", current_illness="Dolor desde hace 3 días",
                physical_exam="Caries en 16", diagnosis_code="K02.1", diagnosis="Caries de la dentina",
                prognosis="Bueno", treatment_plan="Resina", notes="Sin complicaciones",
                weight_kg=Decimal("70.25"), height_cm=Decimal("172.5"), temperature_c=Decimal("36.6"),
                systolic_bp=120, diastolic_bp=80, heart_rate=72, respiratory_rate=16, created_at=T0,
            ),
            with_nulls(c, id=2, subscription_id=CLINIC, patient_id=ANA, started_at=T0, created_at=T0),
            with_nulls(c, id=3, subscription_id=CLINIC, patient_id=DELETED, started_at=T0, created_at=T0,
                       reason="De un paciente borrado"),
            with_nulls(c, id=4, subscription_id=CLINIC, patient_id=JUAN, started_at=T0, created_at=T0,
                       reason="Consulta borrada", deleted_at=T0),
            # A practitioner of another clinic must not lend it their name.
            with_nulls(c, id=5, subscription_id=CLINIC, patient_id=JUAN, practitioner_user_id=20,
                       started_at=datetime(2026, 7, 1, 17, 45), created_at=T0),
            with_nulls(c, id=9, subscription_id=OTHER_CLINIC, patient_id=STRANGER, started_at=T0,
                       created_at=T0, reason="Ajena"),
        ],
    )  # fmt: skip
    d = t.dental_treatments
    conn.execute(
        d.insert(),
        [
            with_nulls(
                d, id=1, subscription_id=CLINIC, patient_id=JUAN, consultation_id=1, tooth_fdi=16,
                surfaces="MO", procedure_code="D2391", procedure_name="Resina", status="completed",
                price=Decimal("1500.50"), currency="MXN", planned_on=date(2026, 1, 10),
                completed_on=date(2026, 1, 15), notes="Color A2", created_at=T0,
            ),
            with_nulls(d, id=2, subscription_id=CLINIC, patient_id=ANA, procedure_name="Limpieza",
                       status="planned", currency="MXN", created_at=T0),
            with_nulls(d, id=3, subscription_id=CLINIC, patient_id=JUAN, consultation_id=4, tooth_fdi=21,
                       procedure_name="Corona", status="in_progress", currency="USD", created_at=T0),
            with_nulls(d, id=4, subscription_id=CLINIC, patient_id=DELETED, procedure_name="Extracción",
                       status="cancelled", currency="MXN", created_at=T0),
            with_nulls(d, id=5, subscription_id=CLINIC, patient_id=MARIA, procedure_name="Borrado",
                       status="planned", currency="MXN", created_at=T0, deleted_at=T0),
            with_nulls(d, id=9, subscription_id=OTHER_CLINIC, patient_id=STRANGER,
                       procedure_name="Ajeno", status="planned", currency="MXN", created_at=T0),
        ],
    )  # fmt: skip
    v = t.vaccinations
    conn.execute(
        v.insert(),
        [
            with_nulls(
                v, id=1, subscription_id=CLINIC, patient_id=JUAN, vaccine="Influenza", dose="1a",
                applied_on=date(2025, 10, 20), lot_number="L123", manufacturer="Sanofi",
                site="Deltoides izquierdo", applied_by="Enf. Rosa", next_dose_on=date(2026, 10, 20),
                notes="Sin reacción", created_at=T0,
            ),
            with_nulls(v, id=2, subscription_id=CLINIC, patient_id=ANA, vaccine="Tétanos",
                       applied_on=date(2024, 3, 1), created_at=T0),
            with_nulls(v, id=3, subscription_id=CLINIC, patient_id=DELETED, vaccine="Hepatitis B",
                       applied_on=date(2024, 3, 1), created_at=T0),
            with_nulls(v, id=4, subscription_id=CLINIC, patient_id=MARIA, vaccine="Borrada",
                       applied_on=date(2024, 3, 1), created_at=T0, deleted_at=T0),
            with_nulls(v, id=9, subscription_id=OTHER_CLINIC, patient_id=STRANGER, vaccine="Ajena",
                       applied_on=date(2024, 3, 1), created_at=T0),
        ],
    )  # fmt: skip
    conn.execute(
        t.anamnesis_questions.insert(),
        [
            {"id": 1, "subscription_id": CLINIC, "section": "Antecedentes", "position": 1,
             "question": "¿Fuma?", "answer_type": "yes_no", "is_active": True},
            {"id": 2, "subscription_id": CLINIC, "section": "Antecedentes", "position": 2,
             "question": "¿Alergias?", "answer_type": "text", "is_active": True},
            {"id": 3, "subscription_id": CLINIC, "section": "Hábitos", "position": 1,
             "question": "¿Fuma?", "answer_type": "yes_no", "is_active": False},
            {"id": 4, "subscription_id": CLINIC, "section": None, "position": 5,
             "question": "Observaciones", "answer_type": "text", "is_active": True},
            {"id": 9, "subscription_id": OTHER_CLINIC, "section": "Otra", "position": 1,
             "question": "Pregunta ajena", "answer_type": "text", "is_active": True},
        ],
    )  # fmt: skip

    def answer(aid: int, pid: int, qid: int, text: str | None, at: datetime, sub: int = CLINIC):
        return {"id": aid, "subscription_id": sub, "patient_id": pid, "question_id": qid,
                "answer": text, "answered_at": at}  # fmt: skip

    later = datetime(2026, 3, 1, 12, 0)
    conn.execute(
        t.anamnesis_answers.insert(),
        [
            # Juan answers again: the later answer wins; on equal times the higher id wins.
            answer(1, JUAN, 1, "Sí", later),
            answer(2, JUAN, 1, "No", T0),
            answer(3, JUAN, 2, "Penicilina", later),
            answer(4, JUAN, 2, "Penicilina y sulfas", later),
            answer(5, JUAN, 3, "Antes sí", T0),  # a retired question keeps its answers
            answer(6, ANA, 1, "No", T0),
            answer(7, ANA, 4, "=1+1", T0),
            answer(8, DELETED, 1, "Sí", T0),
            answer(9, MARIA, 2, None, T0),
            answer(10, MARIA, 2, "Ninguna", later),
            answer(11, STRANGER, 9, "Ajena", T0, sub=OTHER_CLINIC),
        ],
    )


@pytest.fixture
def conn(db_url: str) -> Iterator[Connection]:
    engine = create_engine(db_url)
    t.metadata.create_all(engine)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@pytest.fixture
def clinic_conn(conn: Connection) -> Connection:
    insert_clinical_rows(conn)
    conn.commit()
    return conn


def export(
    dataset: Dataset, conn: Connection, tmp_path: Path, subscription_id: int = CLINIC
) -> Workbook:
    ctx = ExtractContext(
        connection=conn,
        subscription_id=subscription_id,
        files=FolderStore(tmp_path / "files"),
        timezone=ZONE,
        chunksize=2,  # small chunks: every boundary case is exercised
    )
    rendered = render_workbook(
        dataset.extract(ctx),
        path=tmp_path / dataset.archive_path,
        sheet_title=dataset.sheet_title,
        timezone=ZONE,
        archive_path=dataset.archive_path,
        overflow_dir=tmp_path / "overflow",
    )
    return load_workbook(rendered.path)


def records(sheet: Worksheet) -> list[dict[str, object]]:
    header = [cell.value for cell in sheet[1]]
    return [
        dict(zip(header, (cell.value for cell in row), strict=True))
        for row in sheet.iter_rows(min_row=2)
    ]


@pytest.mark.parametrize("dataset", CLINICAL, ids=lambda d: d.name)
def test_rows_are_the_clinic_s_own_live_rows_each_naming_its_patient(
    dataset: Dataset, clinic_conn: Connection, tmp_path: Path
) -> None:
    book = export(dataset, clinic_conn, tmp_path)
    rows = records(book[dataset.sheet_title])

    assert rows
    for row in rows:
        assert row["Paciente"] == LIVE_NAMES[row["ID paciente"]]
    shown = repr(rows)
    for absent in ("Ajen", "Borrad", "Dr. Ajeno", "De un paciente borrado", "Consulta borrada"):
        assert absent not in shown


def test_patients_have_every_column_in_spanish(clinic_conn: Connection, tmp_path: Path) -> None:
    book = export(patients.DATASET, clinic_conn, tmp_path)
    rows = records(book["Pacientes"])

    assert [row["ID paciente"] for row in rows] == [JUAN, ANA, MARIA]
    juan, ana, maria = rows
    assert juan == {
        "ID paciente": JUAN, "Paciente": "Pérez García Juan", "Nombre": "Juan",
        "Primer apellido": "Pérez", "Segundo apellido": "García",
        "Fecha de nacimiento": datetime(1980, 5, 17), "Sexo": "Masculino",
        "CURP": "PEGJ800517HDFRRN09", "RFC": "PEGJ800517AB1", "Correo electrónico": "juan@example.test",
        "Teléfono": "5555555555", "Celular": "5511111111", "Calle": "Av. Juárez",
        "Número exterior": "10", "Número interior": "3B", "Colonia": "Centro",
        "Municipio/Alcaldía": "Cuauhtémoc", "Estado": "Ciudad de México", "Código postal": "06000",
        "País": "México",
        "Régimen fiscal": "605 - Sueldos y Salarios e Ingresos Asimilados a Salarios",
        "CP fiscal": "06000", "Tipo de sangre": "O+",
        "Alergias": "Penicilina", "Notas": "Paciente puntual",
        "Fecha de registro": datetime(2026, 1, 15, 0, 30), "Última actualización": datetime(2026, 2, 1, 12, 0),
    }  # fmt: skip
    assert ana["Paciente"] == "Ana"
    assert [key for key, value in ana.items() if value is not None] == [
        "ID paciente", "Paciente", "Nombre", "Fecha de registro",
    ]  # fmt: skip
    assert maria["Sexo"] == "Femenino"
    assert book["Pacientes"]["F2"].number_format == "dd/mm/yyyy"


def test_consultations_in_the_clinic_s_time_zone_with_who_attended(
    clinic_conn: Connection, tmp_path: Path
) -> None:
    rows = records(export(consultations.DATASET, clinic_conn, tmp_path)["Consultas"])

    assert [(row["ID paciente"], row["ID consulta"]) for row in rows] == [
        (JUAN, 1),
        (JUAN, 5),
        (ANA, 2),
    ]
    first, other_practitioner, empty = rows
    assert first["Fecha y hora"] == datetime(2026, 1, 15, 0, 30)
    assert first["Atendió"] == "Dra. Ana Ruiz"
    assert (first["Peso (kg)"], first["Talla (cm)"], first["Temperatura (°C)"]) == (
        70.25,
        172.5,
        36.6,
    )
    assert (first["Presión sistólica"], first["Presión diastólica"]) == (120, 80)
    assert (first["Frecuencia cardiaca"], first["Frecuencia respiratoria"]) == (72, 16)
    assert (
        first["Diagnóstico (CIE-10)"] == "K02.1" and first["Motivo de consulta"] == "Dolor de muela"
    )
    assert other_practitioner["Fecha y hora"] == datetime(2026, 7, 1, 11, 45)
    assert other_practitioner["Atendió"] is None
    fixed = {"ID paciente", "Paciente", "ID consulta", "Fecha y hora"}
    assert all(value is None for key, value in empty.items() if key not in fixed)


def test_dental_treatments_in_spanish_with_whole_mouth_and_money(
    clinic_conn: Connection, tmp_path: Path
) -> None:
    book = export(dental_treatments.DATASET, clinic_conn, tmp_path)
    rows = records(book["Tratamientos odontológicos"])

    assert [row["Procedimiento"] for row in rows] == ["Resina", "Corona", "Limpieza"]
    resina, corona, limpieza = rows
    assert resina == {
        "ID paciente": JUAN, "Paciente": "Pérez García Juan", "ID tratamiento": 1, "Diente (FDI)": 16,
        "Superficies": "MO", "Clave del procedimiento": "D2391", "Procedimiento": "Resina",
        "Estado": "Terminado", "Precio": 1500.5, "Moneda": "MXN",
        "Fecha planeada": datetime(2026, 1, 10), "Fecha de realización": datetime(2026, 1, 15),
        "Notas": "Color A2", "ID consulta": 1,
    }  # fmt: skip
    assert (corona["Estado"], corona["ID consulta"]) == ("En proceso", None)  # consultation deleted
    assert (limpieza["Diente (FDI)"], limpieza["Estado"], limpieza["Precio"]) == (
        "Boca completa",
        "Planeado",
        None,
    )
    assert book.active["I2"].number_format == "#,##0.00"
    assert book.active["D2"].data_type == "n"  # a number cell: Excel does not flag it as text


def test_tooth_number_is_a_number_cell_and_other_tooth_text_stays_as_written(
    clinic_conn: Connection, tmp_path: Path
) -> None:
    if clinic_conn.dialect.name != "sqlite":
        pytest.skip("only SQLite lets text into the INTEGER tooth_fdi column")
    d = t.dental_treatments
    clinic_conn.execute(
        d.insert(),
        [
            with_nulls(d, id=10 + i, subscription_id=CLINIC, patient_id=MARIA, tooth_fdi=tooth,
                       procedure_name=f"P{i}", status="planned", currency="MXN", created_at=T0)
            for i, tooth in enumerate((85, "18-28", "11 y 12", "=1+1"))
        ],
    )  # fmt: skip
    clinic_conn.commit()

    book = export(dental_treatments.DATASET, clinic_conn, tmp_path)
    sheet = book["Tratamientos odontológicos"]
    header = [cell.value for cell in sheet[1]]
    column = header.index("Diente (FDI)")
    cells = {
        row[header.index("Procedimiento")].value: row[column] for row in sheet.iter_rows(min_row=2)
    }

    assert (cells["P0"].value, cells["P0"].data_type) == (85, "n")
    for name, written in (("P1", "18-28"), ("P2", "11 y 12"), ("P3", "=1+1")):
        assert (cells[name].value, cells[name].data_type) == (written, "s"), name
    assert (cells["Limpieza"].value, cells["Limpieza"].data_type) == ("Boca completa", "s")


def test_sex_is_decoded_x_included_and_an_unknown_value_stays_as_written(
    conn: Connection, tmp_path: Path
) -> None:
    insert_clinics(conn)
    conn.execute(
        t.patients.insert(),
        [
            patient(300 + i, CLINIC, f"P{i}", sex=sex)
            for i, sex in enumerate(("F", "M", "X", "?", None))
        ],
    )
    conn.commit()

    rows = records(export(patients.DATASET, conn, tmp_path)["Pacientes"])

    assert [row["Sexo"] for row in rows] == ["Femenino", "Masculino", "No binario", "?", None]


def test_vaccinations_with_dates(clinic_conn: Connection, tmp_path: Path) -> None:
    rows = records(export(vaccinations.DATASET, clinic_conn, tmp_path)["Vacunación"])

    assert rows == [
        {"ID paciente": JUAN, "Paciente": "Pérez García Juan", "ID vacunación": 1,
         "Vacuna": "Influenza", "Dosis": "1a",
         "Fecha de aplicación": datetime(2025, 10, 20), "Lote": "L123", "Laboratorio": "Sanofi",
         "Sitio de aplicación": "Deltoides izquierdo", "Aplicada por": "Enf. Rosa",
         "Próxima dosis": datetime(2026, 10, 20), "Notas": "Sin reacción"},
        {"ID paciente": ANA, "Paciente": "Ana", "ID vacunación": 2, "Vacuna": "Tétanos", "Dosis": None,
         "Fecha de aplicación": datetime(2024, 3, 1), "Lote": None, "Laboratorio": None,
         "Sitio de aplicación": None, "Aplicada por": None, "Próxima dosis": None, "Notas": None},
    ]  # fmt: skip


def test_anamnesis_has_the_latest_answer_per_patient_and_question(
    clinic_conn: Connection, tmp_path: Path
) -> None:
    book = export(anamnesis.DATASET, clinic_conn, tmp_path)

    assert book.sheetnames == ["Anamnesis", "Preguntas"]
    rows = records(book["Anamnesis"])
    assert [cell.value for cell in book["Anamnesis"][1]] == [
        "ID paciente",
        "Paciente",
        "Fecha de la última respuesta",
        "¿Fuma? (Antecedentes)",
        "¿Alergias?",
        "¿Fuma? (Hábitos)",
        "Observaciones",
    ]
    assert rows == [
        {"ID paciente": JUAN, "Paciente": "Pérez García Juan",
         "Fecha de la última respuesta": datetime(2026, 3, 1, 6, 0),
         "¿Fuma? (Antecedentes)": "Sí", "¿Alergias?": "Penicilina y sulfas",
         "¿Fuma? (Hábitos)": "Antes sí", "Observaciones": None},
        {"ID paciente": ANA, "Paciente": "Ana", "Fecha de la última respuesta": datetime(2026, 1, 15, 0, 30),
         "¿Fuma? (Antecedentes)": "No", "¿Alergias?": None, "¿Fuma? (Hábitos)": None,
         "Observaciones": "=1+1"},
        {"ID paciente": MARIA, "Paciente": "López María",
         "Fecha de la última respuesta": datetime(2026, 3, 1, 6, 0),
         "¿Fuma? (Antecedentes)": None, "¿Alergias?": "Ninguna", "¿Fuma? (Hábitos)": None,
         "Observaciones": None},
    ]  # fmt: skip
    assert book["Anamnesis"]["G3"].data_type == "s"


def test_anamnesis_date_and_number_answers_are_real_cells_and_the_rest_stays_text(
    clinic_conn: Connection, tmp_path: Path
) -> None:
    clinic_conn.execute(
        t.anamnesis_questions.insert(),
        [
            {"id": 5, "subscription_id": CLINIC, "section": "Dental", "position": 1,
             "question": "Última visita al dentista", "answer_type": "date", "is_active": True},
            {"id": 6, "subscription_id": CLINIC, "section": "Dental", "position": 2,
             "question": "Cepillados al día", "answer_type": "number", "is_active": True},
        ],
    )  # fmt: skip
    later = datetime(2026, 3, 2, 12, 0)
    clinic_conn.execute(
        t.anamnesis_answers.insert(),
        [
            {"id": 20, "subscription_id": CLINIC, "patient_id": JUAN, "question_id": 5,
             "answer": "2021-10-07", "answered_at": later},
            {"id": 21, "subscription_id": CLINIC, "patient_id": JUAN, "question_id": 6,
             "answer": "3", "answered_at": later},
            {"id": 22, "subscription_id": CLINIC, "patient_id": ANA, "question_id": 5,
             "answer": "hace un año", "answered_at": later},
            {"id": 23, "subscription_id": CLINIC, "patient_id": ANA, "question_id": 6,
             "answer": "2.5", "answered_at": later},
            {"id": 24, "subscription_id": CLINIC, "patient_id": MARIA, "question_id": 6,
             "answer": "2 o 3", "answered_at": later},
        ],
    )  # fmt: skip
    sheet = export(anamnesis.DATASET, clinic_conn, tmp_path)["Anamnesis"]

    rows = {row["ID paciente"]: row for row in records(sheet)}
    assert rows[JUAN]["Última visita al dentista"] == datetime(2021, 10, 7)
    assert rows[JUAN]["Cepillados al día"] == 3
    assert rows[ANA]["Última visita al dentista"] == "hace un año"  # did not parse: as written
    assert rows[ANA]["Cepillados al día"] == 2.5
    assert rows[MARIA]["Cepillados al día"] == "2 o 3"
    assert rows[JUAN]["¿Fuma? (Antecedentes)"] == "Sí"  # yes_no as the platform stores it
    date_column = [c.value for c in sheet[1]].index("Última visita al dentista") + 1
    assert sheet.cell(row=2, column=date_column).number_format == "dd/mm/yyyy"
    assert sheet.cell(row=3, column=date_column).data_type == "s"


def test_anamnesis_questions_sheet_marks_retired_questions(
    clinic_conn: Connection, tmp_path: Path
) -> None:
    rows = records(export(anamnesis.DATASET, clinic_conn, tmp_path)["Preguntas"])

    assert [tuple(row.values()) for row in rows] == [
        ("Antecedentes", 1, "¿Fuma?", "Sí/No", "Sí"),
        ("Antecedentes", 2, "¿Alergias?", "Texto", "Sí"),
        ("Hábitos", 1, "¿Fuma?", "Sí/No", "No"),
        (None, 5, "Observaciones", "Texto", "Sí"),
    ]
    assert list(rows[0]) == ["Sección", "Posición", "Pregunta", "Tipo de respuesta", "Vigente"]


@pytest.mark.parametrize("dataset", CLINICAL, ids=lambda d: d.name)
def test_a_clinic_without_data_gets_headers_only(
    dataset: Dataset, conn: Connection, tmp_path: Path
) -> None:
    insert_clinics(conn)
    conn.commit()
    book = export(dataset, conn, tmp_path, subscription_id=EMPTY_CLINIC)

    for sheet in book.worksheets:
        assert sheet.max_row == 1
        assert sheet["A1"].value
    assert book.worksheets[0]["A1"].value == "ID paciente"
    assert book.worksheets[0]["B1"].value == "Paciente"


FORMULAS = [
    "=1+1",
    "+1",
    "-1",
    "@SUM(A1)",
    "=cmd|' /C calc'!A0",
    '=HYPERLINK("http://x","y")',
]


def insert_formula_rows(conn: Connection) -> None:
    """A clinic whose every text value looks like a formula: patient i holds FORMULAS[i]."""
    insert_clinics(conn)

    def texts(table: Table, value: str) -> dict[str, str]:
        return {c.name: value for c in table.columns if isinstance(c.type, Text)}

    for i, value in enumerate(FORMULAS):
        pid, common = 1000 + i, {"subscription_id": FORMULA_CLINIC, "created_at": T0}
        conn.execute(t.users.insert(), {**texts(t.users, value), **common, "id": pid,
                     "is_active": True, "can_request_backup": True})  # fmt: skip
        conn.execute(t.patients.insert(), {**texts(t.patients, value), **common, "id": pid})
        conn.execute(t.consultations.insert(), {**texts(t.consultations, value), **common,
                     "id": pid, "patient_id": pid, "practitioner_user_id": pid, "started_at": T0})  # fmt: skip
        conn.execute(t.dental_treatments.insert(), {**texts(t.dental_treatments, value), **common,
                     "id": pid, "patient_id": pid})  # fmt: skip
        conn.execute(t.vaccinations.insert(), {**texts(t.vaccinations, value), **common,
                     "id": pid, "patient_id": pid, "applied_on": date(2026, 1, 1)})  # fmt: skip
        conn.execute(t.anamnesis_questions.insert(), {**texts(t.anamnesis_questions, value),
                     "subscription_id": FORMULA_CLINIC, "id": pid, "position": i, "is_active": True})  # fmt: skip
        conn.execute(t.anamnesis_answers.insert(), {"id": pid, "subscription_id": FORMULA_CLINIC,
                     "patient_id": pid, "question_id": pid, "answer": value, "answered_at": T0})  # fmt: skip


@pytest.mark.parametrize("dataset", CLINICAL, ids=lambda d: d.name)
def test_formula_text_stays_text_in_every_text_column(
    dataset: Dataset, conn: Connection, tmp_path: Path
) -> None:
    insert_formula_rows(conn)
    conn.commit()
    book = export(dataset, conn, tmp_path, subscription_id=FORMULA_CLINIC)

    cells = [cell for sheet in book.worksheets for row in sheet.iter_rows() for cell in row]
    assert all(cell.data_type != "f" for cell in cells)
    sheet = book[dataset.sheet_title]
    header = [cell.value for cell in sheet[1]]
    checked = 0
    for row in sheet.iter_rows(min_row=2):
        value = FORMULAS[row[0].value - 1000]
        for name, cell in zip(header, row, strict=True):
            if cell.data_type == "s" and name not in ("Diente (FDI)", "Vigente"):
                expected = f"{value} {value} {value}" if name == "Paciente" else value
                assert cell.value == expected, name
                checked += 1
    assert checked >= len(FORMULAS) * 2


def test_a_patient_s_answers_split_across_chunks_make_one_row() -> None:
    import pandas as pd

    questions = [Question(i, "S", i, f"P{i}", "text", True) for i in (1, 2, 3)]
    answers = list(
        zip(
            [1, 1, 1, 1, 2, 3, 3, 3],
            [1, 1, 2, 3, 1, 1, 2, 3],
            ["viejo", "nuevo", "x", "y", "b", "c1", "c2", "c3"],
            [T0] * 8,
            strict=True,
        )
    )
    for size in (1, 2, 3, 8):
        chunks = (answers[i : i + size] for i in range(0, len(answers), size))
        # Patient 0 has no answers, patient 2 no name row (deleted meanwhile).
        names = PatientNames([(0, "Z"), (1, "A"), (3, "C"), (4, "D")])
        wide = pd.concat(
            list(latest_answers_by_patient(chunks, questions, names)), ignore_index=True
        )
        assert wide["patient_id"].tolist() == [1, 2, 3], size
        assert wide["patient_name"].tolist() == ["A", None, "C"], size
        assert wide[["q1", "q2", "q3"]].fillna("").values.tolist() == [
            ["nuevo", "x", "y"],
            ["b", "", ""],
            ["c1", "c2", "c3"],
        ]


@pytest.mark.postgres
def test_postgresql_streams_rows_through_a_server_side_cursor(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = create_engine(postgres_url)
    t.metadata.create_all(engine)
    try:
        with engine.connect() as connection:
            insert_clinical_rows(connection)
            connection.commit()
            ctx = ExtractContext(
                connection=connection,
                subscription_id=CLINIC,
                files=FolderStore(tmp_path),
                timezone=ZONE,
                chunksize=1,
            )
            chunks = consultations.DATASET.extract(ctx).chunks
            first = next(chunks)
            open_cursors = connection.execute(text("SELECT count(*) FROM pg_cursors")).scalar()
            rest = list(chunks)
    finally:
        engine.dispose()
    assert open_cursors == 1
    assert len(first) == 1 and sum(len(chunk) for chunk in rest) == 2


# The first integer a float64 cannot hold: read through floats it became 9007199254740992.
BIG = 2**53 + 1


def test_an_integer_beyond_a_double_is_exact_beside_a_null(
    clinic_conn: Connection, tmp_path: Path
) -> None:
    c, d = t.consultations, t.dental_treatments
    clinic_conn.execute(
        c.insert(),
        [with_nulls(c, id=BIG, subscription_id=CLINIC, patient_id=MARIA, started_at=T0, created_at=T0)],
    )  # fmt: skip
    clinic_conn.execute(
        d.insert(),
        [with_nulls(d, id=BIG, subscription_id=CLINIC, patient_id=MARIA, consultation_id=BIG,
                    procedure_name="Amalgama", status="completed", currency="MXN", created_at=T0)],
    )  # fmt: skip
    clinic_conn.commit()
    ctx = ExtractContext(
        connection=clinic_conn, subscription_id=CLINIC, files=FolderStore(tmp_path), timezone=ZONE
    )
    # One chunk: the consultation ids of the other treatments are NULL beside it.
    (chunk,) = dental_treatments.DATASET.extract(ctx).chunks
    assert None in chunk["consultation_id"].tolist() and BIG in chunk["consultation_id"].tolist()

    rows = records(
        export(dental_treatments.DATASET, clinic_conn, tmp_path)["Tratamientos odontológicos"]
    )
    # Beyond Excel's 15 digits a number cell would round it: the digits are written as text.
    assert [(row["ID tratamiento"], row["ID consulta"]) for row in rows] == [
        (1, 1), (3, None), (2, None), (str(BIG), str(BIG)),
    ]  # fmt: skip
    consultations_rows = records(export(consultations.DATASET, clinic_conn, tmp_path)["Consultas"])
    assert [row["ID consulta"] for row in consultations_rows] == [1, 5, 2, str(BIG)]
    assert all(row["Presión sistólica"] is None for row in consultations_rows[1:])


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("16", 16),
        ("85", 85),
        ("016", "016"),
        (" 16", " 16"),
        ("16.0", "16.0"),
        ("Boca completa", "Boca completa"),
    ],
)
def test_only_a_tooth_number_written_plainly_becomes_a_number(stored: str, shown: object) -> None:
    assert dental_treatments.tooth_cell(stored) == shown
