"""pacientes.xlsx: every patient's personal, contact and fiscal data."""

from __future__ import annotations

from sqlalchemy import Select, case, select

from backup_pipeline.datasets.base import Column, Kind, RecordName
from backup_pipeline.datasets.query import PATIENT_COLUMNS, QueryDataset, patient_full_name
from backup_pipeline.platform.tables import patients as p
from backup_pipeline.rules import sat_catalogs

# schema.sql: 'F' | 'M' | 'X'. 'X' is the non-binary marker of Mexican identity documents (the
# passport's "X"); any other value is shown as written.
SEX_LABELS = {"F": "Femenino", "M": "Masculino", "X": "No binario"}

COLUMNS = (
    *PATIENT_COLUMNS,
    Column("first_name", "Nombre"),
    Column("last_name", "Primer apellido"),
    Column("second_last_name", "Segundo apellido"),
    Column("birth_date", "Fecha de nacimiento", Kind.DATE),
    Column("sex", "Sexo"),
    Column("curp", "CURP", width=22),
    Column("rfc", "RFC", width=16),
    Column("email", "Correo electrónico"),
    Column("phone", "Teléfono"),
    Column("mobile", "Celular"),
    Column("street", "Calle"),
    Column("exterior_number", "Número exterior"),
    Column("interior_number", "Número interior"),
    Column("neighborhood", "Colonia"),
    Column("municipality", "Municipio/Alcaldía"),
    Column("state", "Estado"),
    Column("postal_code", "Código postal"),
    Column("country", "País"),
    Column("tax_regime", "Régimen fiscal", width=40),
    Column("tax_postal_code", "CP fiscal"),
    Column("blood_type", "Tipo de sangre"),
    Column("allergies", "Alergias"),
    Column("notes", "Notas"),
    Column("created_at", "Fecha de registro", Kind.DATETIME),
    Column("updated_at", "Última actualización", Kind.DATETIME),
)


def query(subscription_id: int) -> Select:
    return (
        select(
            p.c.id.label("patient_id"),
            patient_full_name().label("patient_name"),
            p.c.first_name,
            p.c.last_name,
            p.c.second_last_name,
            p.c.birth_date,
            case(SEX_LABELS, value=p.c.sex, else_=p.c.sex).label("sex"),
            p.c.curp,
            p.c.rfc,
            p.c.email,
            p.c.phone,
            p.c.mobile,
            p.c.street,
            p.c.exterior_number,
            p.c.interior_number,
            p.c.neighborhood,
            p.c.municipality,
            p.c.state,
            p.c.postal_code,
            p.c.country,
            p.c.tax_regime,
            p.c.tax_postal_code,
            p.c.blood_type,
            p.c.allergies,
            p.c.notes,
            p.c.created_at,
            p.c.updated_at,
        )
        .where(p.c.subscription_id == subscription_id, p.c.deleted_at.is_(None))
        .order_by(p.c.id)
    )


DATASET = QueryDataset(
    name="patients",
    archive_path="pacientes.xlsx",
    sheet_title="Pacientes",
    description="Pacientes: datos personales, de contacto y fiscales.",
    failure_subject="de sus pacientes",
    render_cost=5,
    columns=COLUMNS,
    query=query,
    # "616 - Sin obligaciones fiscales", as the invoice reports show the same catalogue.
    decode={"tax_regime": sat_catalogs.describe_regimen},
    record=RecordName("paciente", "patient_id"),
)
