"""One clinic's archive from what the run staged: the planned files, the workbooks in the declared
order, LEEME.txt with the counts, and the list of contents the email shows; a very large
account's archive in parts that merge without loss."""

from __future__ import annotations

import itertools
import logging
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup_pipeline.archive.plan import FilePlan, read_plan
from backup_pipeline.archive.zipper import FileTally, assemble_archive
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.export import ExportResult
from backup_pipeline.datasets.missing import render_missing_files
from backup_pipeline.rules.archive_entries import (
    ArchiveResult,
    MissingFile,
    PlannedFile,
    StagedEntry,
)
from backup_pipeline.rules.archive_names import archive_folder, download_name, part_key
from backup_pipeline.rules.archive_parts import DEFAULT_PART_SIZE, PartSpan, archive_spans
from backup_pipeline.rules.leeme import (
    FILES_COPIED_LABEL,
    FILES_MISSING_LABEL,
    LEEME_PATH,
    LeemeFacts,
    PartNoteFacts,
    folder_of,
    leeme_text,
    part_note_path,
    part_note_text,
    part_sums_path,
)
from backup_pipeline.rules.spanish import spanish_count, spanish_number, spanish_size
from backup_pipeline.storage import ObjectStore

log = logging.getLogger(__name__)


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

    def totals(self) -> dict[str, object]:
        """What support sees of it in the run (ids, sizes and counts only: no name of a file)."""
        parts = self.parts
        return {
            # Its folder, not its key: the key's file name carries the clinic's name.
            "archive_folder": archive_folder(self.result.key),
            "archive_bytes": self.size,
            "archive_sha256": self.result.sha256,
            "archive_parts": len(parts),
            # Parts are split by the platform's recorded sizes and part 1 keeps room for the
            # workbooks: over the part size means many sizes were unrecorded, or the workbooks
            # outgrew their room (rules.archive_parts.workbook_reserve).
            "largest_part_bytes": max(part.size for part in parts),
            "kept_emailed_archive": self.kept_emailed,
            "zip_entries": sum(part.entries for part in parts),
            "files_copied": sum(part.files_copied for part in parts),
            "file_bytes": sum(part.file_bytes for part in parts),
            "missing_files": sum(len(part.missing) for part in parts),
            "checksum_mismatches": sum(part.checksum_mismatches for part in parts),
        }


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
    exports: Sequence[ExportResult] | Callable[[], Iterable[ExportResult]],
    plan: FilePlan,
    part_size: int = DEFAULT_PART_SIZE,
    cancelled: threading.Event | None = None,
) -> AssembledArchive:
    """Stream the zip to `key` in the archives store (see archive.zipper for how); an archive
    larger than `part_size` becomes numbered parts, each a complete zip (archive.parts).

    The parts merge without loss when extracted into one folder: part 1 holds the workbooks,
    LEEME.txt (the whole archive's guide and totals) and the one list of files not included;
    every part has its own checksum file, and parts 2 and later a short guide of their own
    name. Part 1 is written last, so that its LEEME.txt and list know every other part.

    `exports` may be a callable that waits for workbooks still being rendered: it is called
    once every part's files are in (part 1's last), so that the files are zipped while the
    workbooks render, and yields them in the declared order (DATASETS), each as soon as it
    is ready: each goes into the zip then, while the ones after it still render, rather than
    all of them after the last one. Part 1 keeps room for the workbooks (workbook_reserve)
    since their size is not known when the parts are split.
    Setting `cancelled` stops the zip between two files.
    """
    planned_in: Counter[str | None] = Counter()  # planned files per folder of ARCHIVE_FOLDERS

    def counted(planned: Iterable[PlannedFile]) -> Iterator[PlannedFile]:
        for item in planned:
            planned_in[folder_of(item.archive_path)] += 1
            yield item

    spans = archive_spans(counted(read_plan(archives, plan)), part_size)
    count = len(spans)
    resolved: list[ExportResult] = []
    written: dict[int, ArchiveResult] = {}  # by part number

    def workbooks() -> list[ExportResult]:
        if not resolved:
            resolved.extend(_in_declared_order(exports() if callable(exports) else exports))
        return resolved

    def staged_as_ready() -> Iterator[StagedEntry]:
        # Part 1's workbooks: a callable's as it yields each one, which is in declared order.
        if resolved or not callable(exports):
            yield from _staged_entries(workbooks())
            return
        for export in exports():
            if resolved and _declared_index(export) < _declared_index(resolved[-1]):
                raise ValueError("the workbooks must come in their declared order")
            resolved.append(export)
            yield from export.entries

    def leeme(tally: FileTally) -> str:
        # Part 1, the last one written: the others are all in `written`.
        others = [written[number] for number in sorted(written)]
        missing = [*tally.missing, *(m for part in others for m in part.missing)]
        done = workbooks()
        rows_by_dataset = {e.dataset: e.rows for e in done}
        summaries = [
            part_summary(1, count, tally.files_copied, tally.file_bytes),
            *(
                part_summary(number, count, part.files_copied, part.file_bytes)
                for number, part in sorted(written.items())
            ),
        ]
        return leeme_text(
            LeemeFacts(
                clinic_name=clinic_name,
                generated_at_local=generated_at_local,
                timezone=timezone,
                workbooks=[(e.archive_path, e.description, e.rows) for e in done],
                files_copied=tally.files_copied + sum(p.files_copied for p in others),
                file_bytes=tally.file_bytes + sum(p.file_bytes for p in others),
                missing_count=len(missing),
                invoices_issued=rows_by_dataset.get("invoices_issued", 0),
                invoices_received=rows_by_dataset.get("invoices_received", 0),
                long_text_files=sum(e.long_text_files for e in done),
                part=1,
                parts=count,
                part_summaries=summaries if count > 1 else [],
                folders=_folders_held(planned_in, missing),
                names_shortened=plan.names_shortened,
            )
        )

    def part_note(span: PartSpan) -> Callable[[FileTally], str]:
        def note(tally: FileTally) -> str:
            return part_note_text(
                PartNoteFacts(
                    clinic_name=clinic_name,
                    generated_at_local=generated_at_local,
                    timezone=timezone,
                    part=span.number,
                    parts=count,
                    files_copied=tally.files_copied,
                    file_bytes=tally.file_bytes,
                )
            )

        return note

    for span in [*spans[1:], spans[0]]:
        first = span.number == 1
        with tempfile.TemporaryDirectory(prefix="bp-assemble-") as tmp:
            result = assemble_archive(
                archives=archives,
                files=files,
                final_key=part_key(key, span.number, count),
                staged=staged_as_ready if first else [],
                planned=itertools.islice(read_plan(archives, plan), span.start, span.stop),
                render_missing=(
                    (lambda missing, workdir: render_missing_files(missing, workdir, timezone))
                    if first
                    else None
                ),
                missing_elsewhere=(
                    [m for number in sorted(written) for m in written[number].missing]
                    if first
                    else ()
                ),
                leeme=leeme if first else part_note(span),
                leeme_path=LEEME_PATH if first else part_note_path(span.number, count),
                sums_path=part_sums_path(span.number, count),
                workdir=Path(tmp),
                modified_at=generated_at_local.replace(tzinfo=None),
                cancelled=cancelled,
            )
        written[span.number] = result
        if result.size > part_size:
            log.warning(
                "part %d of %d is %d bytes, over the part size of %d bytes: the platform's "
                "recorded file sizes were low or missing, or the workbooks outgrew the room "
                "part 1 kept for them (archive.parts.workbook_reserve)",
                span.number,
                count,
                result.size,
                part_size,
            )
    results = [written[number] for number in sorted(written)]
    copied = sum(r.files_copied for r in results)
    missing = sum(len(r.missing) for r in results)
    contents = [(_content_label(e), e.rows) for e in workbooks()]
    contents.append((FILES_COPIED_LABEL, copied))
    if missing:
        contents.append((FILES_MISSING_LABEL, missing))
    return AssembledArchive(parts=tuple(results), contents=contents)


def _folders_held(planned_in: Counter[str | None], missing: Sequence[MissingFile]) -> set[str]:
    """The folders that hold at least one copied file: planned there, and not all missing."""
    missing_in = Counter(folder_of(m.archive_path) for m in missing)
    return {
        folder
        for folder, planned in planned_in.items()
        if folder is not None and planned > missing_in[folder]
    }


def part_summary(number: int, parts: int, files_copied: int, file_bytes: int) -> str:
    files = spanish_count(
        files_copied, "archivo adjunto o de facturación", "archivos adjuntos y de facturación"
    )
    size = spanish_size(file_bytes)
    what = (
        f"las hojas de cálculo, los reportes, este LEEME.txt y {files} ({size})"
        if number == 1
        else f"{files} ({size})"
    )
    return f"Parte {spanish_number(number)} de {spanish_number(parts)}: {what}."


def _in_declared_order(exports: Iterable[ExportResult]) -> list[ExportResult]:
    # Workbooks in the order DATASETS declares them, whatever order the ops finished in.
    return sorted(exports, key=_declared_index)


def _declared_index(export: ExportResult) -> int:
    return next((i for i, d in enumerate(DATASETS) if d.name == export.dataset), len(DATASETS))


def _staged_entries(exports: Sequence[ExportResult]) -> list[StagedEntry]:
    return [entry for export in exports for entry in export.entries]


def _content_label(export: ExportResult) -> str:
    dataset = next((d for d in DATASETS if d.name == export.dataset), None)
    return dataset.sheet_title if dataset else export.dataset
