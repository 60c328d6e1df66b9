"""The C allocator's settings for processes that handle whole models.

glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), so after the
first megabyte-sized temporaries (a download's 1 MiB chunks, a block of quantised values, a
fold's scratch) such blocks come from its heaps, one per thread, where freed space is kept for
reuse rather than returned to the kernel. A process that makes a model-sized vector in blocks
on worker threads then keeps hundreds of MB of freed heap: a SecAgg+ site at P = 50M held
1.3x its model in freed blocks above its live data. A fixed threshold of 4 MiB puts every
block of that size in its own mapping, returned when freed, and keeps smaller ones (and their
speed) in the heaps.
"""

from __future__ import annotations

import ctypes
import sys

MMAP_THRESHOLD = 4 * 1024 * 1024
"""Allocations of this size or more are mapped on their own and unmapped when freed."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def return_large_blocks() -> bool:
    """Fixes glibc's mmap and trim thresholds at MMAP_THRESHOLD for this process; False where
    the C library is not glibc (its allocator is left as it is)."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD)
    )
