"""The exported datasets, one module each; DATASETS is their order in the archive and the email.

A new dataset is one module (its query, Spanish columns, failure wording and render cost, see
datasets.base.Dataset) plus one line here.
"""

from __future__ import annotations

from backup_pipeline.datasets import (
    anamnesis,
    attachments,
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
    attachments.DATASET,
    invoices.ISSUED,
    invoices.RECEIVED,
)
