"""Reads the planned files ahead of the zip writer, each whole into a local spool, with retries."""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from backup_pipeline.archive.zipwriter import ArchiveIntegrityError
from backup_pipeline.rules.archive_entries import MissingFile, PlannedFile
from backup_pipeline.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

# A planned file is read whole into a spool before its entry is opened (see fetch); small ones
# stay in memory, larger ones spill to a temporary file in workdir.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
READ_ATTEMPTS = 3
# Files are read ahead of the one zip writer, each by a thread of its own into its own spool,
# up to as many at once as the store wants in flight (ObjectStore.reads_in_flight: dozens on GCS,
# where each request waits tens of milliseconds for its first byte; one from a local folder, whose
# page cache answers at once and where threads only compete with the writer for the cores).
# The read-ahead is bounded three ways:
# - files: it starts at PREFETCH_START_FILES and grows by half each time the writer has to wait
#   for the next file (at most once per window's worth of files), up to the store's
#   reads_in_flight. Every read in flight is a thread that
#   wants the GIL back when its bytes arrive; more than the latency needs only costs CPU.
# - memory: the spools in flight hold at most PREFETCH_MEMORY in memory together (the bytes they
#   actually hold, not claims), a quarter of that each; a spool that would go over spills to workdir.
#   A file the platform says is larger than SPOOL_IN_MEMORY goes to workdir from its first byte.
# - bytes ahead: the sizes the platform claims for the files in flight (UNKNOWN_SIZE_CLAIM for a
#   file without one) add up to at most PREFETCH_AHEAD, so that spools on disk stay bounded too;
#   a file claiming more than that is read alone. A wrong claim costs a spill, never a byte.
PREFETCH_START_FILES = 16
PREFETCH_MEMORY = 16 * 1024 * 1024
PREFETCH_AHEAD = 256 * 1024 * 1024
UNKNOWN_SIZE_CLAIM = 64 * 1024
# A spool in memory is hashed once it is whole, this much at a time.
HASH_CHUNK = 256 * 1024

REASON_NOT_FOUND = "El archivo no existe en el almacenamiento"
REASON_UNREADABLE = "No se pudo leer el archivo"


@dataclass
class Fetched:
    """A planned file read whole into its local spool, hashed on the way in."""

    spool: tempfile.SpooledTemporaryFile[bytes]
    size: int
    sha256: str
    on_disk: bool  # the spool rolled over to workdir (over its share, or claimed large)
    in_memory: int = 0  # bytes of the read-ahead's memory it holds until the writer is done


class MemoryBudget:
    """Bytes the spools in flight may hold in memory together, taken as they fill and given
    back once the writer is done with a spool."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.most = 0  # the most ever held at once
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            self.most = max(self.most, self.held)
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.held -= size


def claimed_size(plan: PlannedFile) -> int:
    """The bytes a planned file counts for in the read-ahead: the platform's size when known."""
    claim = plan.expected_size
    return claim if claim is not None and claim >= 0 else UNKNOWN_SIZE_CLAIM


def prefetched(
    files: ObjectStore,
    planned: Iterable[PlannedFile],
    workdir: Path,
    attempts: int,
    wait_seconds: float,
    depth: int,
) -> Iterator[tuple[PlannedFile, Fetched | MissingFile]]:
    """Each planned file with its fetch, in plan order, fetched by up to `depth` threads ahead.

    The caller is done with a file's spool when it asks for the next file: its memory counts
    against the read-ahead's until then."""
    if depth <= 1:
        for plan in planned:
            yield plan, fetch(files, plan, workdir, attempts, wait_seconds, SPOOL_IN_MEMORY)
        return
    budget = MemoryBudget(PREFETCH_MEMORY)
    # No one file takes more than a quarter of the read-ahead's memory.
    in_memory = min(SPOOL_IN_MEMORY, PREFETCH_MEMORY // 4)
    wanted = min(depth, PREFETCH_START_FILES)
    ahead = 0
    window: deque[tuple[PlannedFile, int, Future[Fetched | MissingFile]]] = deque()
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="zip-fetch")

    since_growth = 0
    current: Fetched | MissingFile | None = None

    def next_fetched() -> tuple[PlannedFile, Fetched | MissingFile]:
        nonlocal ahead, wanted, since_growth
        head, claim, future = window[0]
        since_growth += 1
        if not future.done() and since_growth >= wanted:
            # The writer waits for the reads: more of them in flight may hide their latency.
            # Once per window's worth of files, so that the last growth had time to tell.
            wanted = min(depth, wanted + max(1, wanted // 2))
            since_growth = 0
        fetched = future.result()
        window.popleft()
        ahead -= claim
        return head, fetched

    try:
        for plan in planned:
            claim = claimed_size(plan)
            while window and (len(window) >= wanted or ahead + claim > PREFETCH_AHEAD):
                head, current = next_fetched()
                yield head, current
                _release(current, budget)
                current = None
            pending = pool.submit(
                fetch, files, plan, workdir, attempts, wait_seconds, in_memory, budget
            )
            window.append((plan, claim, pending))
            ahead += claim
        while window:
            head, current = next_fetched()
            yield head, current
            _release(current, budget)
            current = None
        log.debug("read ahead: at most %d files in flight, %d bytes in memory", wanted, budget.most)
    finally:
        # Stopped early (an error, an abandoned archive): drop the fetches not started, wait
        # for the running ones, and close every spool nobody will read.
        if current is not None:  # the one the caller had when it stopped
            _close(current, budget)
        for _, _, future in window:
            future.cancel()
        pool.shutdown(wait=True)
        for _, _, future in window:
            if not future.cancelled() and future.exception() is None:
                _close(future.result(), budget)


def _close(fetched: Fetched | MissingFile, budget: MemoryBudget) -> None:
    if isinstance(fetched, Fetched):
        fetched.spool.close()
        _release(fetched, budget)


def _release(fetched: Fetched | MissingFile, budget: MemoryBudget) -> None:
    if isinstance(fetched, Fetched) and fetched.in_memory:
        budget.give_back(fetched.in_memory)
        fetched.in_memory = 0


def fetch(
    files: ObjectStore,
    plan: PlannedFile,
    workdir: Path,
    attempts: int,
    wait_seconds: float,
    in_memory: int,
    budget: MemoryBudget | None = None,
) -> Fetched | MissingFile:
    """The whole object in a local spool, or why it could not be read.

    A zip entry cannot be taken back once its bytes are in a streaming zip, so a read that
    fails halfway must fail before the entry exists: each file is read whole first (memory
    up to `in_memory`, and as long as `budget` has room, then workdir), and a failed read
    starts over from the beginning.
    """
    for attempt in range(1, attempts + 1):
        # Handed to the caller on success, closed here otherwise. max_size 0: the spool never
        # rolls over by itself, HashingSpool decides when.
        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=0, dir=workdir
        )
        out = HashingSpool(spool, in_memory, budget)
        try:
            if plan.expected_size is not None and plan.expected_size > in_memory:
                out.to_disk()  # claimed larger than a spool keeps in memory: no copy on the way
            try:
                size = files.read_into(plan.source_key, out)  # type: ignore[arg-type]
            except ValueError as exc:
                # A key no store can hold ('..', a backslash): no object can be there. One bad
                # row must leave that file out, as the invoice reports do, not fail every backup.
                raise ObjectNotFound("the platform's key cannot name an object") from exc
            if size != out.size:
                raise ArchiveIntegrityError("the store reported another size than it wrote")
            return Fetched(
                spool=spool,
                size=out.size,
                sha256=out.hexdigest(),
                on_disk=out.on_disk,
                in_memory=out.taken,
            )
        except ObjectNotFound:
            out.discard()
            return _missing(plan, REASON_NOT_FOUND)
        except OSError as exc:
            out.discard()
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
            out.discard()
            raise
    return _missing(plan, REASON_UNREADABLE)


class HashingSpool(io.RawIOBase):
    """The spool as a store writes an object into it: in memory up to `in_memory` bytes while
    `budget` (the read-ahead's memory, shared) has room, then on disk, hashed before it gets
    there (what goes to disk on the way in, what stays in memory once whole).
    A download the store starts over from the top seeks back to 0, and the hash starts over too."""

    def __init__(
        self,
        spool: tempfile.SpooledTemporaryFile[bytes],
        in_memory: int,
        budget: MemoryBudget | None = None,
    ) -> None:
        super().__init__()
        self._spool = spool
        self._in_memory = in_memory
        self._budget = budget
        self._digest = hashlib.sha256()
        self.size = 0
        self.taken = 0  # bytes of the budget it holds (its most in memory)
        self.on_disk = False
        self.write_error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            if not self.on_disk and not self._room_for(self.size + len(data)):
                self.to_disk()
            self._spool.write(data)
        except OSError as exc:
            self.write_error = exc
            raise
        if self.on_disk:
            self._digest.update(data)
        # In memory it is hashed whole once read (hexdigest): stores write a few KiB at a time
        # (resumable-media 8 KiB), and each hash call that releases the GIL is one more hand-over
        # among the dozens of read threads.
        self.size += len(data)
        return len(data)

    def _hash_held(self) -> None:
        """Hash what the spool holds (in memory), in HASH_CHUNK pieces; leaves it at its end."""
        self._spool.seek(0)
        while chunk := self._spool.read(HASH_CHUNK):
            self._digest.update(chunk)

    def _room_for(self, size: int) -> bool:
        if size > self._in_memory:
            return False
        more = size - self.taken
        if more <= 0:
            return True
        if self._budget is not None and not self._budget.take(more):
            return False
        self.taken = size
        return True

    def to_disk(self) -> None:
        """From now on in workdir (what it holds so far moves there too, hashed first): it stays
        there even when a download that starts over truncates it."""
        if self.on_disk:
            return
        self._hash_held()
        self._spool.rollover()
        self.on_disk = True
        self._give_back()

    def discard(self) -> None:
        """The spool is not handed over: closed, its memory back in the budget."""
        self._spool.close()
        self._give_back()

    def _give_back(self) -> None:
        if self._budget is not None and self.taken:
            self._budget.give_back(self.taken)
        self.taken = 0

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
        """The SHA-256 of what was written since the last start over; call once, at the end."""
        if not self.on_disk:
            self._hash_held()
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
