"""The exported datasets, one module each; DATASETS is their order in the archive and the email."""

from __future__ import annotations

from backup_pipeline.datasets import (
    anamnesis,
    consultations,
    dental_treatments,
    invoices,
    patients,
    vaccinations,
)
from backup_pipeline.datasets.base import Dataset

DATASETS: tuple[Dataset, ...] = (
    patients.DATASET,
    anamnesis.DATASET,
    consultations.DATASET,
    dental_treatments.DATASET,
    vaccinations.DATASET,
    invoices.ISSUED,
    invoices.RECEIVED,
)
