"""archivos_no_incluidos.xlsx: which planned files could not be copied into the archive, and why."""

from __future__ import annotations

from pathlib import Path

from backup_pipeline.datasets.base import Column, Extraction, Kind, integer_column
from backup_pipeline.rules.archive_entries import MissingFile
from backup_pipeline.rules.leeme import MISSING_REPORT_PATH

MISSING_COLUMNS = (
    # Where the file would have been: it is not in the archive, so not "Archivo en el respaldo".
    Column("archive_path", "Ruta prevista en el respaldo", Kind.TEXT, 70),
    Column("kind", "Tipo", Kind.TEXT, 18),
    Column("description", "Qué archivo era", Kind.TEXT, 60),
    Column("patient_id", "ID paciente", Kind.INTEGER),
    Column("patient_name", "Paciente", Kind.TEXT, 35),
    Column("record_id", "ID del registro", Kind.INTEGER),
    Column("reason", "Motivo", Kind.TEXT, 60),
)
MISSING_KIND_LABELS = {
    "adjunto": "Archivo adjunto",
    "cfdi_xml": "XML de CFDI",
    "cfdi_pdf": "PDF de CFDI",
}


def render_missing_files(missing: list[MissingFile], workdir: Path, timezone: str) -> Path | None:
    """The workbook of files left out, or None when every file was copied."""
    if not missing:
        return None
    import pandas as pd

    from backup_pipeline.datasets.workbook import render_workbook

    frame = pd.DataFrame(
        [
            {
                "archive_path": m.archive_path,
                "kind": MISSING_KIND_LABELS.get(m.kind, m.kind),
                "description": m.description,
                "patient_id": m.patient_id,
                "patient_name": m.patient_name,
                "record_id": m.record_id,
                "reason": m.reason,
            }
            for m in missing
        ],
        columns=[column.key for column in MISSING_COLUMNS],
    )
    # The ids as they are, a missing one empty: not the floats that a column of ints with a NULL
    # becomes in a DataFrame.
    frame["patient_id"] = integer_column([m.patient_id for m in missing])
    frame["record_id"] = integer_column([m.record_id for m in missing])
    path = workdir / MISSING_REPORT_PATH
    render_workbook(
        Extraction(columns=MISSING_COLUMNS, chunks=iter([frame])),
        path=path,
        sheet_title="Archivos no incluidos",
        timezone=timezone,
        archive_path=MISSING_REPORT_PATH,
        overflow_dir=workdir / "overflow-missing",
    )
    return path
