"""What the C allocator keeps of memory the backup has freed.

glibc's malloc serves a large block from an mmap only while the block is larger than a threshold
that grows with every large block freed (up to 32 MiB), and it keeps freed heap memory until
more than twice that threshold is free at the top of the heap. A run streams gigabytes through
1 MiB buffers and spools of up to 8 MiB, and each worker renders one workbook after another: with
the growing threshold those buffers end up in heaps that keep their high-water mark. With a fixed
threshold large blocks are mapped and unmapped as they come and go, and a worker hands back its
free pages between two workbooks (bench/RESULTS.md: the large backup's peak PSS 10-20 MB lower).

Elsewhere (musl, macOS) there is no mallopt or malloc_trim and nothing changes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's own starting value: blocks from 128 KiB up (a read buffer, a spool, a chunk's column of
# long texts) get their own mapping, given back when freed.
MMAP_THRESHOLD = 128 * 1024
# Free memory at the top of a heap beyond this goes back to the system.
TRIM_THRESHOLD = 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


def hand_back_freed_memory() -> bool:
    """Fix the allocator's thresholds for this process and the processes it forks from now on;
    False where the C library has no such setting."""
    libc = _libc()
    if libc is None:
        return False
    # mallopt returns 1 on success and 0 on error.
    done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.debug("the C library did not take the allocator's thresholds")
    return done


def trim_free_memory() -> None:
    """Give the free pages of every heap of this process back to the system (glibc), e.g.
    between two workbooks."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
