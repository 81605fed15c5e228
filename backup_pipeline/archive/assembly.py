"""One clinic's archive from what the run staged: the planned files, the workbooks in the declared
order, LEEME.txt with the counts, and the list of contents the email shows."""

from __future__ import annotations

import itertools
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup_pipeline.archive.entries import ArchiveResult, StagedEntry
from backup_pipeline.archive.leeme import LeemeFacts, leeme_text
from backup_pipeline.archive.missing import render_missing_files
from backup_pipeline.archive.names import download_name, part_key
from backup_pipeline.archive.parts import (
    DEFAULT_PART_SIZE,
    PartSpan,
    archive_spans,
    workbook_reserve,
)
from backup_pipeline.archive.plan import FilePlan, read_plan
from backup_pipeline.archive.zipper import FileTally, assemble_archive
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.export import ExportResult
from backup_pipeline.spanish import spanish_count, spanish_number
from backup_pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

FILES_LABEL = "Archivos adjuntos y comprobantes copiados"
MISSING_LABEL = "Archivos que no se pudieron incluir"


@dataclass(frozen=True)
class AssembledArchive:
    parts: tuple[ArchiveResult, ...]  # one zip, or a very large account's numbered parts
    contents: list[tuple[str, int]]  # (Spanish label, count) for the email
    kept_emailed: bool = False  # the archive already emailed, kept instead of a new one

    @property
    def result(self) -> ArchiveResult:
        """The first (or only) part: the one backup_requests names."""
        return self.parts[0]

    @property
    def download_name(self) -> str:
        return download_name(self.result.key)

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)


def kept_archive(parts: Sequence[ArchiveResult]) -> AssembledArchive:
    """The archive whose links the requester already holds, delivered again as it is."""
    return AssembledArchive(parts=tuple(parts), contents=[], kept_emailed=True)


def build_archive(
    *,
    archives: ObjectStore,
    files: ObjectStore,
    key: str,
    clinic_name: str,
    timezone: str,
    generated_at_local: datetime,
    exports: Sequence[ExportResult] | Callable[[], Sequence[ExportResult]],
    plan: FilePlan,
    part_size: int = DEFAULT_PART_SIZE,
    cancelled: threading.Event | None = None,
) -> AssembledArchive:
    """Stream the zip to `key` in the archives store (see archive.zipper for how); an archive
    larger than `part_size` becomes numbered parts, each a complete zip (archive.parts).

    `exports` may be a callable that waits for workbooks still being rendered: it is called
    once part 1's files are in, so that the files are zipped while the workbooks render. Part 1
    keeps room for the workbooks (workbook_reserve) since their size is not known yet.
    Setting `cancelled` stops the zip between two files.
    """
    spans = archive_spans(read_plan(archives, plan), part_size)
    summaries = [_part_summary(span, len(spans)) for span in spans] if len(spans) > 1 else []
    resolved: list[ExportResult] = []

    def workbooks() -> list[ExportResult]:
        if not resolved:
            resolved.extend(_in_declared_order(exports() if callable(exports) else exports))
            staged_bytes = sum(entry.size for entry in _staged_entries(resolved))
            if len(spans) > 1 and staged_bytes > workbook_reserve(part_size):
                log.warning(
                    "the workbooks (%d bytes) outgrew the room part 1 kept for them (%d bytes): "
                    "part 1 is larger than the part size by the difference",
                    staged_bytes,
                    workbook_reserve(part_size),
                )
        return resolved

    def leeme_for(span: PartSpan) -> Callable[[FileTally], str]:
        def leeme(tally: FileTally) -> str:
            done = workbooks()
            rows_by_dataset = {e.dataset: e.rows for e in done}
            return leeme_text(
                LeemeFacts(
                    clinic_name=clinic_name,
                    generated_at_local=generated_at_local,
                    timezone=timezone,
                    workbooks=[(e.archive_path, e.description, e.rows) for e in done]
                    if span.number == 1
                    else [],
                    files_copied=tally.files_copied,
                    file_bytes=tally.file_bytes,
                    missing_count=tally.missing_count,
                    invoices_issued=rows_by_dataset.get("invoices_issued", 0),
                    invoices_received=rows_by_dataset.get("invoices_received", 0),
                    long_text_files=sum(e.long_text_files for e in done),
                    part=span.number,
                    parts=len(spans),
                    part_summaries=summaries,
                    names_shortened=plan.names_shortened,
                )
            )

        return leeme

    results = []
    for span in spans:
        with tempfile.TemporaryDirectory(prefix="bp-assemble-") as tmp:
            results.append(
                assemble_archive(
                    archives=archives,
                    files=files,
                    final_key=part_key(key, span.number, len(spans)),
                    staged=(lambda: _staged_entries(workbooks())) if span.number == 1 else [],
                    planned=itertools.islice(read_plan(archives, plan), span.start, span.stop),
                    render_missing=lambda missing, workdir: render_missing_files(
                        missing, workdir, timezone
                    ),
                    leeme=leeme_for(span),
                    workdir=Path(tmp),
                    modified_at=generated_at_local.replace(tzinfo=None),
                    cancelled=cancelled,
                )
            )
    copied = sum(r.files_copied for r in results)
    missing = sum(len(r.missing) for r in results)
    contents = [(_content_label(e), e.rows) for e in workbooks()]
    contents.append((FILES_LABEL, copied))
    if missing:
        contents.append((MISSING_LABEL, missing))
    return AssembledArchive(parts=tuple(results), contents=contents)


def _part_summary(span: PartSpan, parts: int) -> str:
    files = spanish_count(
        span.files, "archivo adjunto o de facturación", "archivos adjuntos y de facturación"
    )
    what = f"las hojas de cálculo y los reportes, y {files}" if span.number == 1 else files
    return f"Parte {spanish_number(span.number)} de {spanish_number(parts)}: {what}."


def _in_declared_order(exports: Sequence[ExportResult]) -> list[ExportResult]:
    # Workbooks in the order DATASETS declares them, whatever order the ops finished in.
    order = {dataset.name: i for i, dataset in enumerate(DATASETS)}
    return sorted(exports, key=lambda e: order.get(e.dataset, len(order)))


def _staged_entries(exports: Sequence[ExportResult]) -> list[StagedEntry]:
    return [entry for export in exports for entry in export.entries]


def _content_label(export: ExportResult) -> str:
    dataset = next((d for d in DATASETS if d.name == export.dataset), None)
    return dataset.sheet_title if dataset else export.dataset
