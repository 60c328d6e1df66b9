"""quorum.heap: glibc's thresholds fixed, so freed model-sized blocks go back to the kernel, and
the free memory of every heap given back on request."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from quorum import heap
from quorum.wire import blobs, frames

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_large_blocks_are_returned_to_the_kernel() -> None:
    """In a fresh process, 8 blocks of 8 MiB, each followed by a small block that lives on,
    then the large ones freed: with glibc's default thresholds (raised past 8 MiB by the first
    such block freed, as a download's or a fold's temporaries do) the freed blocks stay in the
    heap, holes behind the small ones; with the fixed ones they were mappings of their own,
    unmapped when freed. (One thread: a worker thread's arena behaves the same, but which arena
    a new thread gets varies from run to run.)"""
    script = textwrap.dedent(
        """
        import sys
        from quorum import heap
        if sys.argv[1] == "fixed":
            assert heap.return_large_blocks()
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        first = bytearray(9 << 20)
        del first
        keep, blocks = [], []
        before = rss()
        for _ in range(8):
            blocks.append(bytearray(8 << 20))
            keep.append(bytearray(64))
        del blocks
        print(rss() - before)
        """
    )
    grown = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", script, mode],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        for mode in ("default", "fixed")
    }
    assert grown["fixed"] < 4, grown
    assert grown["default"] > 8, grown  # at least one freed 8 MiB block was kept


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_free_memory_a_worker_threads_heap_keeps_goes_back_on_release() -> None:
    """A worker thread (as gRPC's are) fills its heap with 1 MiB blocks, each followed by a
    small one that lives on, then frees the large ones: the heap keeps them, holes the kernel
    still counts, until release_free_memory() gives them back."""
    script = textwrap.dedent(
        """
        import threading
        from quorum import heap
        assert heap.return_large_blocks()
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        keep = []
        def fill():
            blocks = []
            for _ in range(96):
                blocks.append(bytearray(1 << 20))
                keep.append(bytearray(64))
        before = rss()
        worker = threading.Thread(target=fill)
        worker.start()
        worker.join()
        kept = rss() - before
        assert heap.release_free_memory()
        print(kept, rss() - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    kept, released = (int(part) for part in out.split())
    assert kept > 48, out  # most of the 96 MiB the thread freed was still held
    assert released < kept / 4, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise flags are Linux's")
def test_model_sized_arrays_are_not_advised_huge_pages() -> None:
    """numpy marks arrays of 4 MiB or more MADV_HUGEPAGE ("hg" in smaps' VmFlags), and their
    first writes then stall in the kernel's compaction; after no_huge_pages() a fresh array's
    mapping carries no such advice."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from quorum import heap
        if sys.argv[1] == "off":
            assert heap.no_huge_pages()
        array = np.empty(64 << 20, dtype=np.uint8)
        first, last = array.ctypes.data, array.ctypes.data + array.nbytes
        overlaps, advised = False, False
        for line in open("/proc/self/smaps"):
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, stop = (int(x, 16) for x in head.split("-"))
                overlaps = start < last and first < stop
            elif overlaps and head == "VmFlags:":
                advised = advised or "hg" in line.split()[1:]
        print(advised)
        """
    )
    advised = {
        mode: subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        for mode in ("default", "off")
    }
    assert advised == {"default": "True", "off": "False"}, advised


def test_a_transfer_chunk_stays_under_the_mmap_threshold() -> None:
    """A chunk at or over MMAP_THRESHOLD would be a mapping of its own, each message's pages
    faulted in afresh and unmapped: 4 MiB chunks made a P = 250M round 9.9-10.0 s where 2 MiB
    made it 6.7-7.1 s (blobs.CHUNK_BYTES). gRPC holds each message in a buffer of its size."""
    framed = frames.blob_chunk(2**40, 2**41, bytes(blobs.CHUNK_BYTES))
    assert blobs.CHUNK_BYTES < len(framed) < heap.MMAP_THRESHOLD
