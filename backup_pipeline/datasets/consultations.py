"""consultas.xlsx: every consultation, with its vital signs and who attended it."""

from __future__ import annotations

from sqlalchemy import Select, and_, select

from backup_pipeline.datasets.base import Column, Kind, RecordName
from backup_pipeline.datasets.query import (
    PATIENT_COLUMNS,
    QueryDataset,
    live_patient,
    patient_full_name,
)
from backup_pipeline.platform.tables import consultations as c
from backup_pipeline.platform.tables import patients, users

COLUMNS = (
    *PATIENT_COLUMNS,
    Column("consultation_id", "ID consulta", Kind.INTEGER),
    Column("started_at", "Fecha y hora", Kind.DATETIME),
    Column("reason", "Motivo de consulta"),
    Column("current_illness", "Padecimiento actual"),
    Column("physical_exam", "Exploración física"),
    Column("diagnosis_code", "Diagnóstico (CIE-10)"),
    Column("diagnosis", "Diagnóstico"),
    Column("prognosis", "Pronóstico"),
    Column("treatment_plan", "Plan de tratamiento"),
    Column("notes", "Notas"),
    Column("weight_kg", "Peso (kg)", Kind.DECIMAL),
    Column("height_cm", "Talla (cm)", Kind.DECIMAL),
    Column("temperature_c", "Temperatura (°C)", Kind.DECIMAL),
    Column("systolic_bp", "Presión sistólica", Kind.INTEGER),
    Column("diastolic_bp", "Presión diastólica", Kind.INTEGER),
    Column("heart_rate", "Frecuencia cardiaca", Kind.INTEGER),
    Column("respiratory_rate", "Frecuencia respiratoria", Kind.INTEGER),
    Column("practitioner", "Atendió"),
)


def query(subscription_id: int) -> Select:
    practitioner = and_(
        users.c.id == c.c.practitioner_user_id, users.c.subscription_id == subscription_id
    )
    return (
        select(
            c.c.patient_id,
            patient_full_name().label("patient_name"),
            c.c.id.label("consultation_id"),
            c.c.started_at,
            c.c.reason,
            c.c.current_illness,
            c.c.physical_exam,
            c.c.diagnosis_code,
            c.c.diagnosis,
            c.c.prognosis,
            c.c.treatment_plan,
            c.c.notes,
            c.c.weight_kg,
            c.c.height_cm,
            c.c.temperature_c,
            c.c.systolic_bp,
            c.c.diastolic_bp,
            c.c.heart_rate,
            c.c.respiratory_rate,
            users.c.full_name.label("practitioner"),
        )
        .select_from(c)
        .join(patients, live_patient(c, subscription_id))
        .outerjoin(users, practitioner)
        .where(c.c.subscription_id == subscription_id, c.c.deleted_at.is_(None))
        .order_by(c.c.patient_id, c.c.started_at, c.c.id)
    )


DATASET = QueryDataset(
    name="consultations",
    archive_path="consultas.xlsx",
    sheet_title="Consultas",
    description="Consultas registradas, con signos vitales y quién atendió.",
    failure_subject="de sus consultas",
    render_cost=8,
    columns=COLUMNS,
    query=query,
    record=RecordName("consulta", "consultation_id"),
)
