"""tratamientos_odontologicos.xlsx: every dental treatment, planned or done."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Select, Text, and_, case, cast, func, select

from backup_pipeline.datasets.base import Column, Kind, RecordName
from backup_pipeline.datasets.query import (
    PATIENT_COLUMNS,
    QueryDataset,
    live_patient,
    patient_full_name,
)
from backup_pipeline.platform.tables import consultations, patients
from backup_pipeline.platform.tables import dental_treatments as t

STATUS_LABELS = {
    "planned": "Planeado",
    "in_progress": "En proceso",
    "completed": "Terminado",
    "cancelled": "Cancelado",
}
WHOLE_MOUTH = "Boca completa"  # tooth_fdi NULL means the whole mouth
_TOOTH_NUMBER = re.compile(r"[1-9][0-9]{0,8}")

COLUMNS = (
    *PATIENT_COLUMNS,
    Column("treatment_id", "ID tratamiento", Kind.INTEGER),
    # An FDI number is a number cell (Excel flags text that looks like one); the whole mouth,
    # or anything else the platform holds, is text as written.
    Column("tooth", "Diente (FDI)", Kind.MIXED, width=15),
    Column("surfaces", "Superficies"),
    Column("procedure_code", "Clave del procedimiento"),
    Column("procedure_name", "Procedimiento"),
    Column("status", "Estado", width=12),
    Column("price", "Precio", Kind.MONEY),
    Column("currency", "Moneda", width=9),
    Column("planned_on", "Fecha planeada", Kind.DATE),
    Column("completed_on", "Fecha de realización", Kind.DATE),
    Column("notes", "Notas"),
    Column("consultation_id", "ID consulta", Kind.INTEGER),
)


def tooth_cell(value: Any) -> Any:
    """'16' -> 16; 'Boca completa', '016' or any other text stays exactly as written."""
    if isinstance(value, str) and _TOOTH_NUMBER.fullmatch(value):
        return int(value)
    return value


def query(subscription_id: int) -> Select:
    # A treatment linked to a deleted consultation keeps its row but not the dangling id.
    live_consultation = and_(
        consultations.c.id == t.c.consultation_id,
        consultations.c.subscription_id == subscription_id,
        consultations.c.deleted_at.is_(None),
    )
    return (
        select(
            t.c.patient_id,
            patient_full_name().label("patient_name"),
            t.c.id.label("treatment_id"),
            # As text, so that the whole mouth fits the same column; tooth_cell types it back.
            func.coalesce(cast(t.c.tooth_fdi, Text), WHOLE_MOUTH).label("tooth"),
            t.c.surfaces,
            t.c.procedure_code,
            t.c.procedure_name,
            case(STATUS_LABELS, value=t.c.status, else_=t.c.status).label("status"),
            t.c.price,
            t.c.currency,
            t.c.planned_on,
            t.c.completed_on,
            t.c.notes,
            consultations.c.id.label("consultation_id"),
        )
        .select_from(t)
        .join(patients, live_patient(t, subscription_id))
        .outerjoin(consultations, live_consultation)
        .where(t.c.subscription_id == subscription_id, t.c.deleted_at.is_(None))
        .order_by(t.c.patient_id, t.c.id)
    )


DATASET = QueryDataset(
    name="dental_treatments",
    archive_path="tratamientos_odontologicos.xlsx",
    sheet_title="Tratamientos odontológicos",
    description="Tratamientos odontológicos: diente, procedimiento, estado y precio.",
    failure_subject="de sus tratamientos odontológicos",
    render_cost=7,
    columns=COLUMNS,
    query=query,
    decode={"tooth": tooth_cell},
    record=RecordName("tratamiento", "treatment_id"),
)
