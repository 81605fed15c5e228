"""Streams the backup zip into the archives store in one pass, hashing every entry and the zip.

The zip's records are archive/zipwriter.py's; the files are read ahead into local spools by
archive/prefetch.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup_pipeline.archive.memory import trim_free_memory
from backup_pipeline.archive.prefetch import (
    READ_ATTEMPTS,
    REASON_NOT_FOUND,
    REASON_UNREADABLE,
    Fetched,
    prefetched,
)
from backup_pipeline.archive.zipwriter import (
    ZIP_DEFLATED,
    ZIP_STORED,
    ArchiveIntegrityError,
    EntryWriter,
    HashingSink,
)
from backup_pipeline.rules.archive_entries import (
    ArchiveResult,
    MissingFile,
    PlannedFile,
    StagedEntry,
)
from backup_pipeline.rules.leeme import (
    LEEME_ENCODING,
    LEEME_PATH,
    MISSING_REPORT_PATH,
    SHA256SUMS_PATH,
)
from backup_pipeline.storage import ObjectStore

__all__ = [
    "REASON_NOT_FOUND",
    "REASON_UNREADABLE",
    "STORED_SUFFIXES",
    "ArchiveCancelled",
    "ArchiveIntegrityError",
    "FileTally",
    "assemble_archive",
    "compression_for",
]

log = logging.getLogger(__name__)

# The spools' memory, freed by one thread and allocated by another, piles up in the C
# allocator's heaps: every this many files it goes back to the system (memory.py).
TRIM_EVERY_FILES = 1_000


class ArchiveCancelled(Exception):
    """The run stopped wanting this archive (a workbook failed, the run was cancelled)."""


# Formats that are compressed already: deflating them again costs CPU and saves nothing.
STORED_SUFFIXES = frozenset(
    {
        "png", "jpg", "jpeg", "gif", "webp", "heic", "heif", "avif", "jp2", "tif", "tiff",
        "pdf", "zip", "gz", "tgz", "bz2", "xz", "zst", "7z", "rar",
        "xlsx", "xlsm", "docx", "pptx", "odt", "ods", "odp",
        "mp4", "m4v", "mov", "avi", "mkv", "webm", "3gp",
        "mp3", "m4a", "aac", "ogg", "opus", "flac",
    }
)  # fmt: skip


@dataclass(frozen=True)
class FileTally:
    """What the zipper knows about the copied files when LEEME.txt is written."""

    files_copied: int
    file_bytes: int
    missing_count: int
    missing: tuple[MissingFile, ...] = ()  # this zip's, in plan order


def assemble_archive(
    *,
    archives: ObjectStore,
    files: ObjectStore,
    final_key: str,
    staged: Sequence[StagedEntry] | Callable[[], Iterable[StagedEntry]],
    planned: Iterable[PlannedFile],
    render_missing: Callable[[list[MissingFile], Path], Path | None] | None,
    leeme: Callable[[FileTally], str],
    workdir: Path,
    modified_at: datetime | None = None,
    leeme_path: str = LEEME_PATH,
    sums_path: str = SHA256SUMS_PATH,
    missing_elsewhere: Sequence[MissingFile] = (),
    read_attempts: int = READ_ATTEMPTS,
    retry_wait_seconds: float = 2.0,
    prefetch: int | None = None,
    cancelled: threading.Event | None = None,
) -> ArchiveResult:
    """Write the zip to archives at final_key: the planned files, then the staged entries
    (workbooks) in their order, archivos_no_incluidos.xlsx when some could not be copied,
    LEEME.txt (at `leeme_path`), and SHA256SUMS (at `sums_path`) last. `staged` may be a
    callable, called once the files are in: it may wait for workbooks still being rendered,
    and each entry it yields goes into the zip at once.
    Setting `cancelled` stops the zip between two files (ArchiveCancelled), leaving nothing at
    final_key.

    One part of an archive in parts: `render_missing` None leaves the list of files not
    included to another part, and `missing_elsewhere` (the other parts' files not copied)
    joins this zip's own in its list, after them.

    A planned file that is gone or unreadable is left out and returned in `missing`; any other
    error raises and, by the store's contract, leaves nothing at final_key. modified_at is the
    entries' time stamp as the clinic's file explorer shows it (their local wall-clock time).
    """
    stamp = (modified_at or datetime.now(UTC)).timetuple()[:6]
    missing: list[MissingFile] = []
    copied = copied_bytes = mismatches = 0
    with archives.open_write(final_key, "application/zip") as raw:
        sink = HashingSink(raw)
        writer = _EntryWriter(sink, stamp, workdir)

        try:
            depth = prefetch if prefetch is not None else max(files.reads_in_flight, 1)
            fetched_files = prefetched(
                files, planned, workdir, read_attempts, retry_wait_seconds, depth
            )
            with contextlib.closing(fetched_files):
                for plan, fetched in fetched_files:
                    if cancelled is not None and cancelled.is_set():
                        raise ArchiveCancelled("the archive was no longer wanted")
                    if isinstance(fetched, MissingFile):
                        missing.append(fetched)
                        continue
                    with fetched.spool:
                        fetched.spool.seek(0)
                        writer.add_stream(
                            plan.archive_path,
                            fetched.spool,
                            fetched.sha256,
                            check=fetched.on_disk,
                        )
                    copied += 1
                    copied_bytes += fetched.size
                    if copied % TRIM_EVERY_FILES == 0:
                        trim_free_memory()
                    if _differs_from_platform(plan, fetched):
                        mismatches += 1
                        # Kind and id only: the archive path holds the patient's name.
                        log.warning(
                            "%s %s differs from the platform's size or sha256",
                            plan.kind,
                            plan.record_id,
                        )

            trim_free_memory()
            # Last, so that the files go in while the workbooks are still being rendered.
            for entry in staged() if callable(staged) else staged:
                _add_staged(writer, archives, entry)

            if render_missing is not None and (missing or missing_elsewhere):
                report = render_missing([*missing, *missing_elsewhere], workdir)
                if report is not None:
                    with report.open("rb") as src:
                        writer.add_stream(MISSING_REPORT_PATH, src)

            tally = FileTally(
                files_copied=copied,
                file_bytes=copied_bytes,
                missing_count=len(missing),
                missing=tuple(missing),
            )
            writer.add_bytes(leeme_path, leeme(tally).encode(LEEME_ENCODING))
            writer.add_sha256sums(sums_path)
            entries = writer.close()
        except BaseException:
            # The store discards the object; the half-written zip must not be finished later.
            writer.abandon()
            raise

    return ArchiveResult(
        key=final_key,
        size=sink.size,
        sha256=sink.hexdigest(),
        entries=entries,
        files_copied=copied,
        file_bytes=copied_bytes,
        missing=missing,
        checksum_mismatches=mismatches,
    )


def compression_for(archive_path: str) -> int:
    """ZIP_STORED for formats that are compressed already, ZIP_DEFLATED for the rest."""
    # PurePosixPath(archive_path).suffix without pathlib, which interns every part of every
    # path it parses: tens of thousands of file names churned CPython's interned-strings table
    # until it grew by megabytes. The last part that is not '' or '.'; a suffix needs a dot
    # that neither starts nor ends it.
    name = next((part for part in reversed(archive_path.split("/")) if part not in ("", ".")), "")
    dot = name.rfind(".")
    suffix = name[dot + 1 :].lower() if 0 < dot < len(name) - 1 else ""
    return ZIP_STORED if suffix in STORED_SUFFIXES else ZIP_DEFLATED


class _EntryWriter(EntryWriter):
    """The archive's entries, each stored or deflated as its format wants (compression_for)."""

    def __init__(self, sink: HashingSink, stamp: tuple[int, ...], workdir: Path) -> None:
        super().__init__(sink, stamp, workdir, method_for=compression_for)


def _add_staged(writer: _EntryWriter, archives: ObjectStore, entry: StagedEntry) -> None:
    # Staged entries are ours, just written: any read error fails the archive (and the op
    # retries) instead of leaving a workbook out.
    with archives.open_read(entry.staging_key) as src:
        size = writer.add_stream(entry.archive_path, src)
    digest = writer.last_sha256
    if size != entry.size or digest != entry.sha256:
        raise ArchiveIntegrityError(
            f"staged object {entry.staging_key} differs from its manifest "
            f"(size {size} vs {entry.size}, sha256 {digest[:12]} vs {entry.sha256[:12]})"
        )


def _differs_from_platform(plan: PlannedFile, fetched: Fetched) -> bool:
    if plan.expected_size is not None and plan.expected_size != fetched.size:
        return True
    return plan.expected_sha256 is not None and plan.expected_sha256 != fetched.sha256
