"""Reads the planned files ahead of the zip writer, each whole into a local spool, with retries."""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from backup_pipeline.archive.zipwriter import ArchiveIntegrityError
from backup_pipeline.rules.archive_entries import MissingFile, PlannedFile
from backup_pipeline.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

# A planned file is read whole into a spool before its entry is opened (see fetch); small ones
# stay in memory, larger ones spill to a temporary file in workdir.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
READ_ATTEMPTS = 3
# Files are read ahead of the one zip writer, each by its own thread into its own spool, as many
# at once as the store wants in flight (ObjectStore.reads_in_flight: dozens on GCS, where each
# request waits tens of milliseconds for its first byte; one from a local folder, whose page cache
# answers at once and where threads only compete with the writer for the cores). The spools in
# flight keep at most this much in memory together; a file over its share spills to workdir.
PREFETCH_MEMORY = 32 * 1024 * 1024

REASON_NOT_FOUND = "El archivo no existe en el almacenamiento"
REASON_UNREADABLE = "No se pudo leer el archivo"


@dataclass
class Fetched:
    """A planned file read whole into its local spool, hashed on the way in."""

    spool: tempfile.SpooledTemporaryFile[bytes]
    size: int
    sha256: str
    on_disk: bool  # larger than its share of memory: the spool rolled over to workdir


def prefetched(
    files: ObjectStore,
    planned: Iterable[PlannedFile],
    workdir: Path,
    attempts: int,
    wait_seconds: float,
    depth: int,
) -> Iterator[tuple[PlannedFile, Fetched | MissingFile]]:
    """Each planned file with its fetch, in plan order, fetched by up to `depth` threads ahead."""
    if depth <= 1:
        for plan in planned:
            yield plan, fetch(files, plan, workdir, attempts, wait_seconds, SPOOL_IN_MEMORY)
        return
    in_memory = max(64 * 1024, min(SPOOL_IN_MEMORY, PREFETCH_MEMORY // (depth + 1)))
    window: deque[tuple[PlannedFile, Future[Fetched | MissingFile]]] = deque()
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="zip-fetch")
    try:
        for plan in planned:
            pending = pool.submit(fetch, files, plan, workdir, attempts, wait_seconds, in_memory)
            window.append((plan, pending))
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
                if isinstance(fetched, Fetched):
                    fetched.spool.close()


def fetch(
    files: ObjectStore,
    plan: PlannedFile,
    workdir: Path,
    attempts: int,
    wait_seconds: float,
    in_memory: int,
) -> Fetched | MissingFile:
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
        out = HashingSpool(spool)
        try:
            try:
                size = files.read_into(plan.source_key, out)  # type: ignore[arg-type]
            except ValueError as exc:
                # A key no store can hold ('..', a backslash): no object can be there. One bad
                # row must leave that file out, as the invoice reports do, not fail every backup.
                raise ObjectNotFound("the platform's key cannot name an object") from exc
            if size != out.size:
                raise ArchiveIntegrityError("the store reported another size than it wrote")
            return Fetched(
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


class HashingSpool(io.RawIOBase):
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
