"""Free memory handed back to the system (glibc's malloc_trim), and fewer heaps to keep it in
(mallopt's M_ARENA_MAX).

malloc keeps the pages of freed blocks in its heaps for reuse. Two places free more than they
will soon reuse: a worker that has finished a workbook (and renders another, or waits for the
run), and the run's zip, whose file spools are filled by one thread and freed by another, so
that each thread's heap keeps what the other freed. malloc_trim gives the free pages back:
after each workbook in a worker, every 1,000 files in the zip (bench/RESULTS.md: the large
backup's peak PSS 340 MB instead of 355 MB). Elsewhere (musl, macOS) there is no malloc_trim
and nothing changes.

glibc gives each new thread a heap (an arena) of its own, up to 8 per core: 16 on the run pod's 2
CPUs. The run's threads (Dagster's, the zip's, its read-ahead: up to 128 in flight on GCS) and an
invoice report's XML reads each fill one, and what one arena frees only it can reuse, so each
keeps its own free pages: over the zip, the large backup's run process grew by ~10 MB with
the folder store and by ~33 MB with 40 ms per read (issue 23). limit_malloc_arenas caps them
before the run starts its threads and forks its workers, which inherit the cap.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any

# mallopt's parameter for the most arenas (glibc's malloc.h): negative, as glibc numbers them.
_M_ARENA_MAX = -8
# The run's arenas: the main one and one that every other thread shares. Its threads mostly wait
# (for a read, for the GIL) and Python's own allocator serves small objects under the GIL, so
# they seldom contend for an arena's lock.
RUN_ARENAS = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):  # Windows has no process-wide C library handle (TypeError)
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], Any] | None:
    """The C library's malloc_trim, looked up once per process; None where there is none."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
    return trim


def trim_free_memory() -> bool:
    """Give the free pages of every heap of this process back to the system; False where the C
    library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def limit_malloc_arenas(arenas: int = RUN_ARENAS) -> bool:
    """Let the C allocator make no more than `arenas` heaps in this process (and in the processes
    it forks from now on); threads beyond them share the existing ones. Arenas already made stay,
    so call it before starting threads. False where the C library has no mallopt (not glibc)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_ARENA_MAX, max(arenas, 1)))
