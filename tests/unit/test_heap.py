"""quorum.heap: glibc's thresholds fixed, so freed model-sized blocks go back to the kernel."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_large_blocks_are_returned_to_the_kernel() -> None:
    """In a fresh process, worker threads each make 8 blocks of 8 MiB, each followed by a
    small block that lives on, then free the large ones: with glibc's default thresholds the
    freed blocks stay in the heaps, holes behind the small ones; with the fixed ones they were
    mappings of their own, unmapped when freed."""
    script = textwrap.dedent(
        """
        import sys, threading
        from quorum import heap
        if sys.argv[1] == "fixed":
            assert heap.return_large_blocks()
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        keep = []
        def work():
            blocks = []
            for _ in range(8):
                blocks.append(bytearray(8 << 20))
                keep.append(bytearray(64))
            del blocks
        before = rss()
        for _ in range(4):
            t = threading.Thread(target=work)
            t.start()
            t.join()
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
    assert grown["default"] > 32, grown
