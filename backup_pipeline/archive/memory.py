"""Free memory handed back to the system (glibc's malloc_trim).

malloc keeps the pages of freed blocks in its heaps for reuse. Two places free more than they
will soon reuse: a worker that has finished a workbook (and renders another, or waits for the
run), and the run's zip, whose file spools are filled by one thread and freed by another, so
that each thread's heap keeps what the other freed. malloc_trim gives the free pages back:
after each workbook in a worker, every 1,000 files in the zip (bench/RESULTS.md: the large
backup's peak PSS 340 MB instead of 355 MB). Elsewhere (musl, macOS) there is no malloc_trim
and nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def _malloc_trim() -> Callable[[int], Any] | None:
    """The C library's malloc_trim, looked up once per process; None where there is none."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
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
