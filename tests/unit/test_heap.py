"""quorum.heap: glibc's thresholds fixed, so freed model-sized blocks go back to the kernel, and
the free memory of every heap given back on request."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import textwrap
import threading

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
    """A worker thread (as gRPC's are) allocates 96 blocks of 1 MiB from its own heap and frees
    them: glibc keeps the space, which the kernel still counts, until release_free_memory()
    gives it back. (The allocator's own settings from the environment are left out.)"""
    script = textwrap.dedent(
        """
        import threading
        from quorum import heap
        assert heap.return_large_blocks()
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        pinned = []
        def fill():
            blocks = [bytearray(1 << 20) for _ in range(96)]
            # Live at the heap's top, as a stream's next chunk is: glibc cannot give the
            # freed space back by trimming the top, only `release_free_memory` can.
            pinned.append(bytearray(4096))
            del blocks
        before = rss()
        worker = threading.Thread(target=fill)
        worker.start()
        worker.join()
        kept = rss() - before
        assert heap.release_free_memory()
        print(kept, rss() - before)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    ).stdout
    kept, released = (int(part) for part in out.split())
    assert kept > 48, out  # most of the 96 MiB the thread freed was still held
    assert released < kept / 4, out


def test_releases_run_one_at_a_time_and_once_more_for_what_came_meanwhile() -> None:
    started, finish = threading.Event(), threading.Event()
    calls: list[int] = []

    def release() -> bool:
        calls.append(len(calls))
        started.set()
        finish.wait(10)
        return True

    async def scenario() -> list[int]:
        releases = heap.Releases(release)
        releases.ask()
        await asyncio.to_thread(started.wait, 10)
        for _ in range(3):  # while the first call runs
            releases.ask()
        assert calls == [0]
        finish.set()

        async def settled() -> None:
            while releases._running is not None or len(calls) < 2:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), 10)
        releases.ask()  # idle again: a call of its own
        await asyncio.wait_for(settled(), 10)
        while releases._running is not None:
            await asyncio.sleep(0.01)
        return calls

    assert asyncio.run(scenario()) == [0, 1, 2]


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
