"""The memory a site's downloads land in, kept from one download to the next.

A model downloaded every round needs a buffer of its size, and fresh memory costs the kernel a
zeroed page every 4 KiB (on a VM that gives freed memory back to its host, the host's fault as
well): 0.7 CPU s for 1 GB on this 2-core VM, against 0.2 s to write over pages already held.
So a download lands in a memfd (Linux's shared memory without a name), mapped with its pages
populated at once; when its blob is let go (`BlobCache` evicts it) and nothing refers to it any
more, the memfd is kept for the next download (`reclaim`). While a view of the blob is alive
(a task that kept its parameters' arrays) the blob keeps its memory and the next download takes
fresh memory: no one's bytes change under them. Where there is no memfd, every download takes
anonymous memory, as it does.
"""

from __future__ import annotations

import mmap
import os

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
"""Linux: fault the map's pages in with the mapping, not one by one as they are written."""


def spare_memory() -> int | None:
    """A new, empty memfd; None where the system has none or refuses one (a sandbox, no
    descriptors left): the download takes anonymous memory."""
    create = getattr(os, "memfd_create", None)
    try:
        return None if create is None else int(create("quorum-download", os.MFD_CLOEXEC))
    except OSError:
        return None


class Landed:
    """A blob's memory: written once, in order (`write`, a sink of `Incoming`), then read
    through `view`."""

    def __init__(self, size: int, fd: int | None) -> None:
        """`fd`: a memfd to hold the blob (an earlier download's, reclaimed, or a new one),
        which this owns from now on; None for anonymous memory."""
        self.size = size
        self._fd = fd
        if fd is None:
            self._map = mmap.mmap(-1, max(size, 1))
        else:
            # A reclaimed memfd keeps the pages it still covers (a map is one byte at least).
            os.ftruncate(fd, max(size, 1))
            self._map = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED | _POPULATE)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Appends `data` (an `Incoming` sink): the caller keeps within `size`."""
        return self._map.write(data)

    def view(self) -> memoryview:
        """The blob, read-only. The memory stays the blob's while this or anything made from
        it (a numpy array over it) is alive."""
        whole = memoryview(self._map)
        blob = whole[: self.size].toreadonly()
        whole.release()
        return blob

    def reclaim(self) -> int | None:
        """The memfd, to hold the next download, when nothing refers to the blob any more (its
        map closes); None while a view is alive (the blob keeps its memory, the memfd is let go
        with the map) or for anonymous memory."""
        fd, self._fd = self._fd, None
        try:
            self._map.close()
        except BufferError:  # a view is alive: the map keeps a descriptor of its own
            if fd is not None:
                os.close(fd)
            return None
        return fd

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
