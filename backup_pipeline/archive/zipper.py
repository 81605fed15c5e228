"""Streams the backup zip into the archives store in one pass, hashing every entry and the zip."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import struct
import tempfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO

from backup_pipeline.archive.entries import ArchiveResult, MissingFile, PlannedFile, StagedEntry
from backup_pipeline.archive.leeme import (
    LEEME_ENCODING,
    LEEME_PATH,
    MISSING_REPORT_PATH,
    SHA256SUMS_PATH,
)
from backup_pipeline.archive.verify import is_contained, sha256sums_text
from backup_pipeline.memory import trim_free_memory
from backup_pipeline.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

# Each chunk reuses the heap memory the last one freed. A 1 MiB chunk is above malloc's initial
# mmap threshold: a fresh mapping to fault in for each chunk until freed mappings raise the
# threshold, and from then on a block that raises the heap's high-water mark.
CHUNK = 64 * 1024
# A planned file is read whole into a spool before its entry is opened (see _fetch); small ones
# stay in memory, larger ones spill to a temporary file in workdir.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
READ_ATTEMPTS = 3
# Files are read ahead of the one zip writer, each by its own thread into its own spool, as many
# at once as the store wants in flight (ObjectStore.reads_in_flight: dozens on GCS, where each
# request waits tens of milliseconds for its first byte; one from a local folder, whose page cache
# answers at once and where threads only compete with the writer for the cores). The spools in
# flight keep at most this much in memory together; a file over its share spills to workdir.
PREFETCH_MEMORY = 32 * 1024 * 1024
# The spools' memory, freed by one thread and allocated by another, piles up in the C
# allocator's heaps: every this many files it goes back to the system (memory.py).
TRIM_EVERY_FILES = 1_000
# Central directory records and SHA256SUMS lines wait in a spool this large before workdir.
BOOKKEEPING_IN_MEMORY = 256 * 1024


class ArchiveCancelled(Exception):
    """The run stopped wanting this archive (a workbook failed, the run was cancelled)."""


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
    missing: tuple[MissingFile, ...] = ()  # this zip's, in plan order


class ArchiveIntegrityError(RuntimeError):
    """A staged entry read back differs from its manifest: the staging area is damaged."""


def assemble_archive(
    *,
    archives: ObjectStore,
    files: ObjectStore,
    final_key: str,
    staged: Sequence[StagedEntry] | Callable[[], Sequence[StagedEntry]],
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
    callable, called once the files are in: it may wait for workbooks still being rendered.
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
        sink = _HashingSink(raw)
        writer = _EntryWriter(sink, stamp, workdir)

        try:
            depth = prefetch if prefetch is not None else max(files.reads_in_flight, 1)
            fetched_files = _prefetched(
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
    """Adds entries to the zip and lists each one's sha256 for SHA256SUMS.

    Nothing per entry stays in memory but 16 bytes of its path's hash (to refuse a repeated path):
    the central directory records and the SHA256SUMS lines go to spools as each entry is written,
    so that 500,000 files cost what 5,000 do.
    """

    def __init__(self, sink: _HashingSink, stamp: tuple[int, ...], workdir: Path) -> None:
        self._sink = sink
        self._sums: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed in close)
            max_size=BOOKKEEPING_IN_MEMORY, dir=workdir
        )
        self._zf = _StreamingZip(sink, workdir)
        self._stamp = stamp
        self._path_hashes: set[bytes] = set()
        self.entries = 0
        self.last_sha256 = ""

    def add_stream(
        self, path: str, src: IO[bytes], sha256: str | None = None, *, check: bool = True
    ) -> int:
        """Copy src into a new entry; returns its size. A known `sha256` (the spool's, taken as
        it was filled) is checked against a second hash of what is read back, which guards a
        spool on disk against a local disk fault; with check=False (a spool in memory) it is
        listed as it is, and the bytes are hashed once instead of twice."""
        digest = hashlib.sha256() if check or sha256 is None else None
        size = 0
        with self._zf.open(self._info(path), mode="w", force_zip64=True) as entry:
            while chunk := src.read(CHUNK):
                if digest is not None:
                    digest.update(chunk)
                size += len(chunk)
                entry.write(chunk)
        self._zf.entry_written()
        hexdigest = digest.hexdigest() if digest is not None else sha256
        if sha256 is not None and hexdigest != sha256:
            raise ArchiveIntegrityError(f"entry #{self.entries} changed in the local spool")
        self._listed(path, hexdigest)
        return size

    def add_bytes(self, path: str, data: bytes) -> None:
        with self._zf.open(self._info(path), mode="w", force_zip64=True) as entry:
            entry.write(data)
        self._zf.entry_written()
        self._listed(path, hashlib.sha256(data).hexdigest())

    def add_sha256sums(self, path: str) -> None:
        """The last entry: every entry so far, one '<hex>  <path>' line each, in zip order."""
        self._sums.seek(0)
        with self._zf.open(self._info(path), mode="w", force_zip64=True) as entry:
            while chunk := self._sums.read(CHUNK):
                entry.write(chunk)
        self._zf.entry_written()
        self.entries += 1

    def close(self) -> int:
        """Write the central directory; returns the number of entries."""
        try:
            self._zf.close()
        finally:
            self._sums.close()
            self._zf.discard_central_directory()
        return self.entries

    def abandon(self) -> None:
        """Close the zip into a sink that drops everything: otherwise ZipFile.__del__ would
        write a central directory into whatever the store's stream has become by then."""
        self._sink.abandon()
        with contextlib.suppress(Exception):
            self._zf.close()
        self._sums.close()
        self._zf.discard_central_directory()

    def _listed(self, path: str, hexdigest: str) -> None:
        self._sums.write(sha256sums_text([(path, hexdigest)]).encode("utf-8"))
        self.entries += 1
        self.last_sha256 = hexdigest

    def _info(self, path: str) -> zipfile.ZipInfo:
        # Our paths only: a duplicate or an escaping path is a bug upstream, not user data.
        if not is_contained(path) or path.endswith("/"):
            raise ValueError(f"entry #{self.entries} has an unsafe archive path")
        path_hash = hashlib.blake2b(path.encode("utf-8"), digest_size=16).digest()
        if path_hash in self._path_hashes:
            raise ValueError(f"entry #{self.entries} repeats an archive path")
        self._path_hashes.add(path_hash)
        info = zipfile.ZipInfo(path, date_time=self._stamp)  # type: ignore[arg-type]
        info.compress_type = compression_for(path)
        info.external_attr = 0o644 << 16  # rw-r--r-- when extracted on macOS and Linux
        return info


class _StreamingZip(zipfile.ZipFile):
    """zipfile's writer (local headers, deflate, zip64 data descriptors), minus its memory of
    every entry: each written entry's ZipInfo (about 600 bytes) leaves `filelist` at once as its
    central directory record, the same bytes zipfile's close() would write, in a spool; close()
    streams that spool and the end records.

    The records are built as CPython 3.11's ZipFile._write_end_record builds them, for the
    entries this writer makes (no extra field, no comment, stored or deflated);
    backup_pipeline_tests/job/test_zipper.py checks the zip byte for byte against zipfile's.
    """

    def __init__(self, sink: _HashingSink, workdir: Path) -> None:
        super().__init__(sink, mode="w", allowZip64=True)  # type: ignore[arg-type]
        self._central: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=BOOKKEEPING_IN_MEMORY, dir=workdir
        )
        self._count = 0

    def entry_written(self) -> None:
        info = self.filelist.pop()
        del self.NameToInfo[info.filename]
        self._central.write(_central_record(info))
        self._count += 1

    def discard_central_directory(self) -> None:
        self._central.close()

    def _write_end_record(self) -> None:  # called by close()
        self._central.seek(0)
        while chunk := self._central.read(CHUNK):
            self.fp.write(chunk)  # type: ignore[union-attr]
        end = self.fp.tell()  # type: ignore[union-attr]
        self.fp.write(_end_records(self._count, self.start_dir, end))  # type: ignore[union-attr]
        self.fp.flush()  # type: ignore[union-attr]


_ZIP64_VERSION = 45
_CENTRAL_DIR = struct.Struct(zipfile.structCentralDir)
_END_ARCHIVE64 = struct.Struct(zipfile.structEndArchive64)
_END_ARCHIVE64_LOCATOR = struct.Struct(zipfile.structEndArchive64Locator)
_END_ARCHIVE = struct.Struct(zipfile.structEndArchive)


def _central_record(info: zipfile.ZipInfo) -> bytes:
    """The central directory record zipfile would write for `info` (see _StreamingZip)."""
    if info.extra or info.comment:
        raise ValueError("the zip's entries carry no extra field or comment")
    dt = info.date_time
    dosdate = (dt[0] - 1980) << 9 | dt[1] << 5 | dt[2]
    dostime = dt[3] << 11 | dt[4] << 5 | (dt[5] // 2)
    zip64: list[int] = []
    file_size, compress_size, header_offset = info.file_size, info.compress_size, info.header_offset
    if file_size > zipfile.ZIP64_LIMIT or compress_size > zipfile.ZIP64_LIMIT:
        zip64 += [file_size, compress_size]
        file_size = compress_size = 0xFFFFFFFF
    if header_offset > zipfile.ZIP64_LIMIT:
        zip64.append(header_offset)
        header_offset = 0xFFFFFFFF
    extra = struct.pack(f"<HH{len(zip64)}Q", 1, 8 * len(zip64), *zip64) if zip64 else b""
    min_version = _ZIP64_VERSION if zip64 else 0
    filename, flag_bits = info._encodeFilenameFlags()  # type: ignore[attr-defined]
    record = _CENTRAL_DIR.pack(
        zipfile.stringCentralDir,
        max(min_version, info.create_version),
        info.create_system,
        max(min_version, info.extract_version),
        info.reserved,
        flag_bits,
        info.compress_type,
        dostime,
        dosdate,
        info.CRC,
        compress_size,
        file_size,
        len(filename),
        len(extra),
        0,
        0,
        info.internal_attr,
        info.external_attr,
        header_offset,
    )
    return record + filename + extra


def _end_records(count: int, start: int, end: int) -> bytes:
    """The end of central directory record, after zip64's when the zip needs them."""
    size = end - start
    records = b""
    if (
        count > zipfile.ZIP_FILECOUNT_LIMIT
        or start > zipfile.ZIP64_LIMIT
        or size > zipfile.ZIP64_LIMIT
    ):
        records += _END_ARCHIVE64.pack(
            zipfile.stringEndArchive64, 44, 45, 45, 0, 0, count, count, size, start
        )
        records += _END_ARCHIVE64_LOCATOR.pack(zipfile.stringEndArchive64Locator, 0, end, 1)
        count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    return records + _END_ARCHIVE.pack(zipfile.stringEndArchive, 0, 0, count, count, size, start, 0)


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


@dataclass
class _Fetched:
    spool: tempfile.SpooledTemporaryFile[bytes]
    size: int
    sha256: str
    on_disk: bool  # larger than its share of memory: the spool rolled over to workdir


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
            yield plan, _fetch(files, plan, workdir, attempts, wait_seconds, SPOOL_IN_MEMORY)
        return
    in_memory = max(64 * 1024, min(SPOOL_IN_MEMORY, PREFETCH_MEMORY // (depth + 1)))
    window: deque[tuple[PlannedFile, Future[_Fetched | MissingFile]]] = deque()
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="zip-fetch")
    try:
        for plan in planned:
            fetch = pool.submit(_fetch, files, plan, workdir, attempts, wait_seconds, in_memory)
            window.append((plan, fetch))
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
    files: ObjectStore,
    plan: PlannedFile,
    workdir: Path,
    attempts: int,
    wait_seconds: float,
    in_memory: int,
) -> _Fetched | MissingFile:
    """The whole object in a local spool, or why it could not be read.

    A zip entry cannot be taken back once its bytes are in a streaming zip, so a read that
    fails halfway must fail before the entry exists: each file is read whole first (memory
    up to `in_memory`, then workdir), and a failed read starts over from the beginning.
    """
    for attempt in range(1, attempts + 1):
        # Handed to the caller on success, closed here otherwise.
        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=in_memory, dir=workdir
        )
        out = _HashingSpool(spool)
        try:
            try:
                size = files.read_into(plan.source_key, out)  # type: ignore[arg-type]
            except ValueError as exc:
                # A key no store can hold ('..', a backslash): no object can be there. One bad
                # row must leave that file out, as the invoice reports do, not fail every backup.
                raise ObjectNotFound("the platform's key cannot name an object") from exc
            if size != out.size:
                raise ArchiveIntegrityError("the store reported another size than it wrote")
            return _Fetched(
                spool=spool, size=out.size, sha256=out.hexdigest(), on_disk=out.most > in_memory
            )
        except ObjectNotFound:
            spool.close()
            return _missing(plan, REASON_NOT_FOUND)
        except OSError as exc:
            spool.close()
            if out.write_error is not None:
                raise  # our local disk, not the platform's object
            log.warning(
                "%s %s: read attempt %d of %d failed: %s",
                plan.kind,
                plan.record_id,
                attempt,
                attempts,
                type(exc).__name__,
            )
            if attempt < attempts:
                time.sleep(wait_seconds * attempt)
        except BaseException:
            spool.close()
            raise
    return _missing(plan, REASON_UNREADABLE)


class _HashingSpool(io.RawIOBase):
    """The spool as a store writes an object into it: hashed on the way in. A download the
    store starts over from the top seeks back to 0, and the hash starts over too."""

    def __init__(self, spool: IO[bytes]) -> None:
        super().__init__()
        self._spool = spool
        self._digest = hashlib.sha256()
        self.size = 0
        self.most = 0  # the most it ever held
        self.write_error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            self._spool.write(data)
        except OSError as exc:
            self.write_error = exc
            raise
        self._digest.update(data)
        self.size += len(data)
        # SpooledTemporaryFile moves to disk once it holds more than its max_size, and stays
        # there even when a download that starts over truncates it.
        self.most = max(self.most, self.size)
        return len(data)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if (offset, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation("a spool is only ever written again from the start")
        self._spool.seek(0)
        self._spool.truncate()
        self._digest = hashlib.sha256()
        self.size = 0
        return 0

    def truncate(self, size: int | None = None) -> int:
        return self.size

    def tell(self) -> int:
        return self.size

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


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
