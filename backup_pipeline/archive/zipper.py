"""Streams the backup zip into the archives store in one pass, hashing every entry and the zip."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from backup_pipeline.archive.entries import ArchiveResult, MissingFile, PlannedFile, StagedEntry
from backup_pipeline.archive.leeme import (
    LEEME_ENCODING,
    LEEME_PATH,
    MISSING_REPORT_PATH,
    SHA256SUMS_PATH,
)
from backup_pipeline.archive.verify import is_contained, sha256sums_text
from backup_pipeline.storage import ObjectNotFound, ObjectStore
from backup_pipeline.storage.folder import FolderStore

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# A planned file is read whole into a spool before its entry is opened (see _fetch); small ones
# stay in memory, larger ones spill to a temporary file in workdir.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
READ_ATTEMPTS = 3
# Files read ahead of the one zip writer, each by its own thread into its own spool: downloads
# overlap each other and the zipping (per-object latency dominates small files on GCS), while
# memory stays bounded by about (PREFETCH_FILES + 1) * SPOOL_IN_MEMORY. A local folder answers
# from the page cache at once: there the threads only compete with the writer for the cores
# (about 30% slower in bench/RESULTS.md), so its files are read one at a time.
PREFETCH_FILES = 4

REASON_NOT_FOUND = "El archivo no existe en el almacenamiento"
REASON_UNREADABLE = "No se pudo leer el archivo"

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


class ArchiveIntegrityError(RuntimeError):
    """A staged entry read back differs from its manifest: the staging area is damaged."""


def assemble_archive(
    *,
    archives: ObjectStore,
    files: ObjectStore,
    final_key: str,
    staged: Sequence[StagedEntry],
    planned: Iterable[PlannedFile],
    render_missing: Callable[[list[MissingFile], Path], Path | None],
    leeme: Callable[[FileTally], str],
    workdir: Path,
    modified_at: datetime | None = None,
    read_attempts: int = READ_ATTEMPTS,
    retry_wait_seconds: float = 2.0,
    prefetch: int | None = None,
) -> ArchiveResult:
    """Write the zip to archives at final_key: staged entries (workbooks) in their order, the
    planned files, archivos_no_incluidos.xlsx when some could not be copied, LEEME.txt, and
    SHA256SUMS last.

    A planned file that is gone or unreadable is left out and returned in `missing`; any other
    error raises and, by the store's contract, leaves nothing at final_key. modified_at is the
    entries' time stamp as the clinic's file explorer shows it (their local wall-clock time).
    """
    stamp = (modified_at or datetime.now(UTC)).timetuple()[:6]
    missing: list[MissingFile] = []
    copied = copied_bytes = mismatches = 0
    with archives.open_write(final_key, "application/zip") as raw:
        sink = _HashingSink(raw)
        writer = _EntryWriter(sink, stamp)

        try:
            for entry in staged:
                _add_staged(writer, archives, entry)

            depth = prefetch if prefetch is not None else _read_ahead(files)
            fetched_files = _prefetched(
                files, planned, workdir, read_attempts, retry_wait_seconds, depth
            )
            with contextlib.closing(fetched_files):
                for plan, fetched in fetched_files:
                    if isinstance(fetched, MissingFile):
                        missing.append(fetched)
                        continue
                    with fetched.spool:
                        fetched.spool.seek(0)
                        writer.add_stream(plan.archive_path, fetched.spool, fetched.sha256)
                    copied += 1
                    copied_bytes += fetched.size
                    if _differs_from_platform(plan, fetched):
                        mismatches += 1
                        # Kind and id only: the archive path holds the patient's name.
                        log.warning(
                            "%s %s differs from the platform's size or sha256",
                            plan.kind,
                            plan.record_id,
                        )

            if missing:
                report = render_missing(missing, workdir)
                if report is not None:
                    with report.open("rb") as src:
                        writer.add_stream(MISSING_REPORT_PATH, src)

            tally = FileTally(
                files_copied=copied, file_bytes=copied_bytes, missing_count=len(missing)
            )
            writer.add_bytes(LEEME_PATH, leeme(tally).encode(LEEME_ENCODING))
            writer.add_bytes(SHA256SUMS_PATH, sha256sums_text(writer.sums).encode("utf-8"))
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
    suffix = PurePosixPath(archive_path).suffix.lower().lstrip(".")
    return zipfile.ZIP_STORED if suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED


class _HashingSink:
    """The store's stream as zipfile sees it: write-only and not seekable, so zipfile streams
    (data descriptors) whatever the store; the zip's size and sha256 come out of the one pass."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Drop all further writes."""
        self._out = io.BytesIO()


class _EntryWriter:
    """Adds entries to the zip and remembers each one's sha256 for SHA256SUMS."""

    def __init__(self, sink: _HashingSink, stamp: tuple[int, ...]) -> None:
        self._sink = sink
        self._zf = zipfile.ZipFile(sink, mode="w", allowZip64=True)  # type: ignore[arg-type]
        self._stamp = stamp
        self._paths: set[str] = set()
        self.sums: list[tuple[str, str]] = []

    def add_stream(self, path: str, src: IO[bytes], expected_sha256: str | None = None) -> int:
        """Copy src into a new entry; returns its size. expected_sha256 guards a spool's
        second read against a local disk fault."""
        digest = hashlib.sha256()
        size = 0
        with self._zf.open(self._info(path), mode="w", force_zip64=True) as entry:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                entry.write(chunk)
        hexdigest = digest.hexdigest()
        if expected_sha256 is not None and hexdigest != expected_sha256:
            raise ArchiveIntegrityError(f"entry #{len(self.sums)} changed in the local spool")
        self.sums.append((path, hexdigest))
        return size

    def add_bytes(self, path: str, data: bytes) -> None:
        with self._zf.open(self._info(path), mode="w", force_zip64=True) as entry:
            entry.write(data)
        self.sums.append((path, hashlib.sha256(data).hexdigest()))

    def close(self) -> int:
        """Write the central directory; returns the number of entries."""
        self._zf.close()
        return len(self._zf.infolist())

    def abandon(self) -> None:
        """Close the zip into a sink that drops everything: otherwise ZipFile.__del__ would
        write a central directory into whatever the store's stream has become by then."""
        self._sink.abandon()
        with contextlib.suppress(Exception):
            self._zf.close()

    def _info(self, path: str) -> zipfile.ZipInfo:
        # Our paths only: a duplicate or an escaping path is a bug upstream, not user data.
        if not is_contained(path) or path.endswith("/"):
            raise ValueError(f"entry #{len(self.sums)} has an unsafe archive path")
        if path in self._paths:
            raise ValueError(f"entry #{len(self.sums)} repeats an archive path")
        self._paths.add(path)
        info = zipfile.ZipInfo(path, date_time=self._stamp)  # type: ignore[arg-type]
        info.compress_type = compression_for(path)
        info.external_attr = 0o644 << 16  # rw-r--r-- when extracted on macOS and Linux
        return info


def _add_staged(writer: _EntryWriter, archives: ObjectStore, entry: StagedEntry) -> None:
    # Staged entries are ours, just written: any read error fails the archive (and the op
    # retries) instead of leaving a workbook out.
    with archives.open_read(entry.staging_key) as src:
        size = writer.add_stream(entry.archive_path, src)
    digest = writer.sums[-1][1]
    if size != entry.size or digest != entry.sha256:
        raise ArchiveIntegrityError(
            f"staged object {entry.staging_key} differs from its manifest "
            f"(size {size} vs {entry.size}, sha256 {digest[:12]} vs {entry.sha256[:12]})"
        )


@dataclass
class _Fetched:
    spool: tempfile.SpooledTemporaryFile[bytes]
    size: int
    sha256: str


class _SourceReadError(Exception):
    """Reading the platform's object failed (as opposed to writing our local spool)."""


def _read_ahead(files: ObjectStore) -> int:
    return 1 if isinstance(files, FolderStore) else PREFETCH_FILES


def _prefetched(
    files: ObjectStore,
    planned: Iterable[PlannedFile],
    workdir: Path,
    attempts: int,
    wait_seconds: float,
    depth: int,
) -> Iterator[tuple[PlannedFile, _Fetched | MissingFile]]:
    """Each planned file with its fetch, in plan order, fetched by up to `depth` threads ahead."""
    if depth <= 1:
        for plan in planned:
            yield plan, _fetch(files, plan, workdir, attempts, wait_seconds)
        return
    window: deque[tuple[PlannedFile, Future[_Fetched | MissingFile]]] = deque()
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="zip-fetch")
    try:
        for plan in planned:
            window.append((plan, pool.submit(_fetch, files, plan, workdir, attempts, wait_seconds)))
            if len(window) > depth:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()
    finally:
        # Stopped early (an error, an abandoned archive): drop the fetches not started, wait
        # for the running ones, and close every spool nobody will read.
        for _, future in window:
            future.cancel()
        pool.shutdown(wait=True)
        for _, future in window:
            if not future.cancelled() and future.exception() is None:
                fetched = future.result()
                if isinstance(fetched, _Fetched):
                    fetched.spool.close()


def _fetch(
    files: ObjectStore, plan: PlannedFile, workdir: Path, attempts: int, wait_seconds: float
) -> _Fetched | MissingFile:
    """The whole object in a local spool, or why it could not be read.

    A zip entry cannot be taken back once its bytes are in a streaming zip, so a read that
    fails halfway must fail before the entry exists: each file is read whole first (memory
    up to SPOOL_IN_MEMORY, then workdir), and a failed read starts over from the beginning.
    """
    for attempt in range(1, attempts + 1):
        # Handed to the caller on success, closed here otherwise.
        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_IN_MEMORY, dir=workdir
        )
        try:
            digest = hashlib.sha256()
            size = 0
            for chunk in _read_chunks(files, plan.source_key):
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)  # a local disk error here is ours: it raises
            return _Fetched(spool=spool, size=size, sha256=digest.hexdigest())
        except ObjectNotFound:
            spool.close()
            return _missing(plan, REASON_NOT_FOUND)
        except _SourceReadError as exc:
            spool.close()
            log.warning(
                "%s %s: read attempt %d of %d failed: %s",
                plan.kind,
                plan.record_id,
                attempt,
                attempts,
                type(exc.__cause__).__name__,
            )
            if attempt < attempts:
                time.sleep(wait_seconds * attempt)
        except BaseException:
            spool.close()
            raise
    return _missing(plan, REASON_UNREADABLE)


def _read_chunks(files: ObjectStore, key: str) -> Iterator[bytes]:
    try:
        src = files.open_read(key)
    except ObjectNotFound:
        raise
    except ValueError as exc:
        # A key no store can hold ('..', a backslash): no object can be there. One bad row must
        # leave that file out, as the invoice reports do, not fail every backup of the clinic.
        raise ObjectNotFound("the platform's key cannot name an object in this store") from exc
    except OSError as exc:
        raise _SourceReadError from exc
    with src:
        while True:
            try:
                chunk = src.read(CHUNK)
            except ObjectNotFound:
                raise
            except OSError as exc:
                raise _SourceReadError from exc
            if not chunk:
                return
            yield chunk


def _missing(plan: PlannedFile, reason: str) -> MissingFile:
    return MissingFile(
        archive_path=plan.archive_path,
        kind=plan.kind,
        record_id=plan.record_id,
        patient_id=plan.patient_id,
        reason=reason,
        patient_name=plan.patient_name,
        description=plan.description,
    )


def _differs_from_platform(plan: PlannedFile, fetched: _Fetched) -> bool:
    if plan.expected_size is not None and plan.expected_size != fetched.size:
        return True
    return plan.expected_sha256 is not None and plan.expected_sha256 != fetched.sha256
