"""One clinic's archive from what the run staged: the workbooks in the declared order, the planned
files, LEEME.txt with the counts, and the list of contents the email shows."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup_pipeline.archive.entries import ArchiveResult, StagedEntry
from backup_pipeline.archive.leeme import LeemeFacts, leeme_text
from backup_pipeline.archive.missing import render_missing_files
from backup_pipeline.archive.names import download_name
from backup_pipeline.archive.plan import FilePlan, read_plan
from backup_pipeline.archive.zipper import FileTally, assemble_archive
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.export import ExportResult
from backup_pipeline.storage import ObjectStore

FILES_LABEL = "Archivos adjuntos y comprobantes copiados"
MISSING_LABEL = "Archivos que no se pudieron incluir"


@dataclass(frozen=True)
class AssembledArchive:
    result: ArchiveResult
    download_name: str
    contents: list[tuple[str, int]]  # (Spanish label, count) for the email
    kept_emailed: bool = False  # the archive already emailed, kept instead of a new one


def kept_archive(result: ArchiveResult) -> AssembledArchive:
    """The archive whose link the requester already holds, delivered again as it is."""
    return AssembledArchive(
        result=result, download_name=download_name(result.key), contents=[], kept_emailed=True
    )


def build_archive(
    *,
    archives: ObjectStore,
    files: ObjectStore,
    key: str,
    clinic_name: str,
    timezone: str,
    generated_at_local: datetime,
    exports: Sequence[ExportResult],
    plan: FilePlan,
) -> AssembledArchive:
    """Stream the zip to `key` in the archives store; see archive.zipper for how."""
    exports = _in_declared_order(exports)
    rows_by_dataset = {e.dataset: e.rows for e in exports}

    def leeme(tally: FileTally) -> str:
        return leeme_text(
            LeemeFacts(
                clinic_name=clinic_name,
                generated_at_local=generated_at_local,
                timezone=timezone,
                workbooks=[(e.archive_path, e.description, e.rows) for e in exports],
                files_copied=tally.files_copied,
                file_bytes=tally.file_bytes,
                missing_count=tally.missing_count,
                invoices_issued=rows_by_dataset.get("invoices_issued", 0),
                invoices_received=rows_by_dataset.get("invoices_received", 0),
                long_text_files=sum(e.long_text_files for e in exports),
            )
        )

    with tempfile.TemporaryDirectory(prefix="bp-assemble-") as tmp:
        result = assemble_archive(
            archives=archives,
            files=files,
            final_key=key,
            staged=_staged_entries(exports),
            planned=read_plan(archives, plan),
            render_missing=lambda missing, workdir: render_missing_files(
                missing, workdir, timezone
            ),
            leeme=leeme,
            workdir=Path(tmp),
            modified_at=generated_at_local.replace(tzinfo=None),
        )
    contents = [(_content_label(e), e.rows) for e in exports]
    contents.append((FILES_LABEL, result.files_copied))
    if result.missing:
        contents.append((MISSING_LABEL, len(result.missing)))
    return AssembledArchive(result=result, download_name=download_name(key), contents=contents)


def _in_declared_order(exports: Sequence[ExportResult]) -> list[ExportResult]:
    # Workbooks in the order DATASETS declares them, whatever order the ops finished in.
    order = {dataset.name: i for i, dataset in enumerate(DATASETS)}
    return sorted(exports, key=lambda e: order.get(e.dataset, len(order)))


def _staged_entries(exports: Sequence[ExportResult]) -> list[StagedEntry]:
    return [entry for export in exports for entry in export.entries]


def _content_label(export: ExportResult) -> str:
    dataset = next((d for d in DATASETS if d.name == export.dataset), None)
    return dataset.sheet_title if dataset else export.dataset
