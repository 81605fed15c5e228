"""adjuntos.xlsx: an index of every attachment, mapping each file in the archive to its patient,
its name as uploaded, date, type, size and (in a parted archive) the part that holds it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from backup_pipeline.archive.plan import plan_files, read_plan
from backup_pipeline.datasets.base import Column, ExtractContext, Extraction, Kind, RecordName
from backup_pipeline.rules.archive_entries import KIND_ATTACHMENT, PlannedFile
from backup_pipeline.rules.archive_parts import DEFAULT_PART_SIZE, PartSpan, archive_spans

if TYPE_CHECKING:
    # pandas is imported where rows are extracted: importing the package (sensors, the CLI, a
    # run worker's start) does not need it (datasets.export.import_renderer).
    import pandas as pd

BASE_COLUMNS = (
    Column("patient_id", "ID paciente", Kind.INTEGER),
    Column("patient_name", "Paciente", width=35),
    Column("attachment_id", "ID archivo adjunto", Kind.INTEGER),
    Column("original_name", "Nombre original del archivo", width=40),
    Column("uploaded_at", "Fecha de carga", Kind.DATETIME),
    Column("content_type", "Tipo de archivo", width=20),
    Column("size", "Tamaño (bytes)", Kind.INTEGER, width=14),
    Column("archive_path", "Ubicación en el respaldo", width=60),
)
# Only in an archive delivered in parts: which .zip holds the file.
PART_COLUMN = Column("part", "Parte del respaldo", Kind.INTEGER, width=10)


@dataclass(frozen=True)
class AttachmentIndex:
    """The attachments of the run's file plan (the one the zip copies), one row each, in the
    plan's order: by patient, upload time and id."""

    name: str = "attachments"
    archive_path: str = "adjuntos.xlsx"
    sheet_title: str = "Índice de adjuntos"
    description: str = (
        "Índice de adjuntos: paciente, nombre original, fecha, tipo, tamaño y ubicación."
    )
    failure_subject: str = "del índice de sus archivos adjuntos"
    render_cost: int = 3

    def extract(self, ctx: ExtractContext) -> Extraction:
        part_size = ctx.part_size or DEFAULT_PART_SIZE
        # The same split the zip makes (archive.parts), from the same plan: one more pass over
        # it, holding only each part's bounds.
        spans = archive_spans(_planned(ctx), part_size)
        columns = BASE_COLUMNS + ((PART_COLUMN,) if len(spans) > 1 else ())
        return Extraction(
            columns=columns,
            chunks=_chunks(_planned(ctx), spans, ctx.chunksize, [c.key for c in columns]),
            record=RecordName("adjunto", "attachment_id"),
        )


def _planned(ctx: ExtractContext) -> Iterator[PlannedFile]:
    """The run's staged plan; without one (a dataset exported on its own), the plan made now
    from the database, named the same way."""
    if ctx.plan is not None and ctx.archives is not None:
        return read_plan(ctx.archives, ctx.plan() if callable(ctx.plan) else ctx.plan)
    return plan_files(ctx.connection, ctx.subscription_id)


def _chunks(
    planned: Iterable[PlannedFile], spans: list[PartSpan], chunksize: int, keys: list[str]
) -> Iterator[pd.DataFrame]:
    rows: list[dict[str, object]] = []
    span = iter(spans)
    current = next(span, None)
    for index, item in enumerate(planned):
        while current is not None and index >= current.stop:
            current = next(span, None)
        if item.kind != KIND_ATTACHMENT:
            continue
        rows.append(
            {
                "patient_id": item.patient_id,
                "patient_name": item.patient_name,
                "attachment_id": item.record_id,
                "original_name": item.original_name,
                "uploaded_at": _utc(item.uploaded_at),
                "content_type": item.content_type,
                "size": item.expected_size,
                "archive_path": item.archive_path,
                "part": current.number if current is not None else None,
            }
        )
        if len(rows) >= chunksize:
            yield _frame(rows, keys)
            rows = []
    if rows:
        yield _frame(rows, keys)


def _utc(stamp: str | None) -> datetime | None:
    # Parsed here, value by value: pandas guesses one format for a whole column, and a platform
    # timestamp may or may not carry microseconds.
    return datetime.fromisoformat(stamp) if stamp else None


def _frame(rows: list[dict[str, object]], keys: list[str]) -> pd.DataFrame:
    import pandas as pd

    # Object columns: an id or size stays an exact integer, a missing one stays empty.
    return pd.DataFrame.from_records(rows, columns=keys).astype(object)


DATASET = AttachmentIndex()
