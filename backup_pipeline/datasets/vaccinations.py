"""vacunacion.xlsx: every vaccine applied, with its lot and next dose."""

from __future__ import annotations

from sqlalchemy import Select, select

from backup_pipeline.datasets.base import Column, Kind, RecordName
from backup_pipeline.datasets.query import (
    PATIENT_COLUMNS,
    QueryDataset,
    live_patient,
    patient_full_name,
)
from backup_pipeline.platform.tables import patients
from backup_pipeline.platform.tables import vaccinations as v

COLUMNS = (
    *PATIENT_COLUMNS,
    Column("vaccination_id", "ID vacunación", Kind.INTEGER),
    Column("vaccine", "Vacuna"),
    Column("dose", "Dosis"),
    Column("applied_on", "Fecha de aplicación", Kind.DATE),
    Column("lot_number", "Lote"),
    Column("manufacturer", "Laboratorio"),
    Column("site", "Sitio de aplicación"),
    Column("applied_by", "Aplicada por"),
    Column("next_dose_on", "Próxima dosis", Kind.DATE),
    Column("notes", "Notas"),
)


def query(subscription_id: int) -> Select:
    return (
        select(
            v.c.patient_id,
            patient_full_name().label("patient_name"),
            v.c.id.label("vaccination_id"),
            v.c.vaccine,
            v.c.dose,
            v.c.applied_on,
            v.c.lot_number,
            v.c.manufacturer,
            v.c.site,
            v.c.applied_by,
            v.c.next_dose_on,
            v.c.notes,
        )
        .select_from(v)
        .join(patients, live_patient(v, subscription_id))
        .where(v.c.subscription_id == subscription_id, v.c.deleted_at.is_(None))
        .order_by(v.c.patient_id, v.c.applied_on, v.c.id)
    )


DATASET = QueryDataset(
    name="vaccinations",
    archive_path="vacunacion.xlsx",
    sheet_title="Vacunación",
    description="Registros de vacunación: vacuna, dosis, lote y próxima dosis.",
    failure_subject="de sus registros de vacunación",
    render_cost=4,
    columns=COLUMNS,
    query=query,
    record=RecordName("vacuna", "vaccination_id"),
)
