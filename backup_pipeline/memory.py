"""Free memory handed back to the system between two workbooks (glibc's malloc_trim).

A worker renders one workbook after another. What one workbook freed stays in the worker's heaps
(malloc keeps free pages for reuse) while the worker renders the next or waits for the run;
malloc_trim gives the free pages back. Elsewhere (musl, macOS) there is no malloc_trim and
nothing changes.
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
