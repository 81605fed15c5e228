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


def trim_free_memory() -> bool:
    """Give the free pages of every heap of this process back to the system; False where the C
    library cannot."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
