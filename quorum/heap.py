"""The C allocator's settings for processes that handle whole models.

glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), so after the
first megabyte-sized temporaries (a download's 2 MiB chunks, a block of quantised values, a
fold's scratch) such blocks come from its heaps, one per thread, where freed space is kept for
reuse rather than returned to the kernel. A process that makes a model-sized vector in blocks
on worker threads then keeps hundreds of MB of freed heap: a SecAgg+ site at P = 50M held
1.3x its model in freed blocks above its live data. A fixed threshold of 4 MiB puts every
block of that size in its own mapping, returned when freed, and keeps smaller ones (and their
speed) in the heaps.

numpy asks the kernel for transparent huge pages (madvise) on every array of 4 MiB or more.
Where the kernel compacts memory on such a fault (`defrag = madvise`, the usual default), the
first write to a fresh model-sized array stalls in compaction: the first fold of a 1 GB model
into its float64 sum took 3.7-5.6 CPU seconds with huge pages and about 1 without, on this
2-core machine, every round (compact_stall in /proc/vmstat counts them).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("quorum.heap")

MMAP_THRESHOLD = 4 * 1024 * 1024
"""Allocations of this size or more are mapped on their own and unmapped when freed."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def _glibc(name: str, *argtypes: Any) -> Any:
    """glibc's allocator function `name` (returning an int), None where this process has none
    (not Linux, or another C library: musl has neither `mallopt` nor `malloc_trim`)."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None), name, None)
    if function is not None:
        function.argtypes, function.restype = list(argtypes), ctypes.c_int
    return function


def return_large_blocks() -> bool:
    """Fixes glibc's mmap and trim thresholds at MMAP_THRESHOLD for this process; False where
    the C library is not glibc (its allocator is left as it is)."""
    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD)
    )


def release_free_memory() -> bool:
    """Returns the free memory of every heap of this process to the kernel (glibc's
    `malloc_trim`); False where glibc's `malloc_trim` is absent (musl, macOS). The federation
    server calls it after each upload (`Releases`): gRPC receives a stream's bytes on its own
    threads in blocks under MMAP_THRESHOLD, from each thread's heap, and glibc keeps what those
    heaps held at their fullest. At P = 10M with 25 sites and a 4 MiB stream window the server
    peaked at 315-325 MB with it, 386 MB without (226-229 MB with 2 sites). A call took 1-5 ms
    in the server; under heavy allocation on other threads it can take tens of ms, and their
    allocations wait on its arena locks meanwhile."""
    trim = _glibc("malloc_trim", ctypes.c_size_t)
    if trim is None:
        return False
    trim(0)
    return True


class Releases:
    """Runs `release` (`release_free_memory`) in the event loop's executor when asked, one call
    at a time: asked while a call runs, it runs once more after it (what that call may have
    missed), however often it was asked meanwhile. Uploads that end together so share calls,
    and the last of a burst is still covered."""

    def __init__(self, release: Callable[[], bool]) -> None:
        self._release = release
        self._running: asyncio.Future[bool] | None = None
        self._again = False

    def ask(self) -> None:
        """From the event loop's thread."""
        if self._running is not None:
            self._again = True
            return
        try:
            self._running = asyncio.get_running_loop().run_in_executor(None, self._release)
        except RuntimeError:  # the executor is shut down: the server is stopping
            return
        self._running.add_done_callback(self._done)

    def _done(self, call: asyncio.Future[bool]) -> None:
        self._running = None
        if not call.cancelled() and call.exception() is not None:
            log.warning("event=release_failed error=%r", call.exception())
        if self._again:
            self._again = False
            self.ask()


def no_huge_pages() -> bool:
    """Stops numpy from advising huge pages for its arrays in this process; False where this
    numpy has no such switch. NUMPY_MADVISE_HUGEPAGE=0 does the same, read when numpy is first
    imported, which is too late for a process already running."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            switch = getattr(importlib.import_module(name), "_set_madvise_hugepage", None)
        except ImportError:
            continue
        if switch is not None:
            switch(False)
            return True
    return False
