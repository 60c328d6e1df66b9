"""quorum.client.landing and BlobCache.landing: a download's memory is taken over by the next
download once nothing refers to its blob, and never while something does."""

from __future__ import annotations

import os

import numpy as np
import pytest

from quorum.client.landing import Landed, spare_memory
from quorum.client.transfer import BlobCache
from quorum.wire import blobs

pytestmark = pytest.mark.skipif(spare_memory() is None, reason="no memfd on this system")


def _fill(landed: Landed, data: bytes) -> Landed:
    for chunk in blobs.chunks(data):
        assert landed.write(chunk) == len(chunk)
    return landed


def _landed(data: bytes, fd: int | None) -> Landed:
    return _fill(Landed(len(data), fd), data)


def _inode(fd: int | None) -> int:
    assert fd is not None
    return os.fstat(fd).st_ino


def test_a_blob_let_go_gives_its_memory_to_the_next() -> None:
    fd = spare_memory()
    inode = _inode(fd)
    first = _landed(os.urandom(3_000_000), fd)
    assert bytes(first.view()[:4]) != b""  # a view made and dropped
    reclaimed = first.reclaim()
    assert _inode(reclaimed) == inode
    for size in (100_000, 5_000_000):  # smaller and larger than before
        data = os.urandom(size)
        landed = _landed(data, reclaimed)
        assert landed.view() == data and len(landed.view()) == size
        reclaimed = landed.reclaim()
        assert _inode(reclaimed) == inode
    assert reclaimed is not None
    os.close(reclaimed)


def test_a_blob_someone_holds_keeps_its_memory() -> None:
    data = os.urandom(2_000_000)
    landed = _landed(data, spare_memory())
    held = np.frombuffer(landed.view(), np.uint8)  # a task that kept its parameters' arrays
    assert not held.flags.writeable
    assert landed.reclaim() is None
    _landed(os.urandom(len(data)), spare_memory())  # the next download, in other memory
    assert held.tobytes() == data


def test_the_cache_lands_a_download_in_the_memory_of_the_blob_it_lets_go() -> None:
    """Memory taken over still holds the blob before it until the download writes it: what
    the next landing shows before its first write tells where it lies."""
    cache = BlobCache(keep=1)
    first, second = os.urandom(1_500_000), os.urandom(1_500_000)

    def download(key: str, data: bytes) -> None:
        landed = _fill(cache.landing(len(data)), data)
        cache.put(key, landed.view(), named=True, landed=landed)

    download("a", first)
    held = cache.get("a")  # a caller still holds the first blob: the next lands elsewhere
    assert held is not None
    fresh = cache.landing(len(first))
    assert fresh.view() == bytes(len(first))
    assert cache.get("a") is None and held[0] == first
    del fresh, held

    download("b", second)
    reused = cache.landing(len(second))  # nothing refers to "b" any more
    assert reused.view() == second
    del reused

    cache.put("c", first, named=True)  # bytes read from disk: no memory to take over
    assert cache.landing(len(first)).view() == bytes(len(first))


def test_anonymous_memory_where_there_is_no_memfd() -> None:
    data = os.urandom(1_000_000)
    landed = _landed(data, None)
    assert landed.view() == data
    assert landed.reclaim() is None
    assert Landed(0, None).view() == b""


def test_an_empty_blob_lands_in_a_memfd_too() -> None:
    landed = Landed(0, spare_memory())
    assert landed.view() == b""
    reclaimed = landed.reclaim()
    assert reclaimed is not None
    assert Landed(3, reclaimed).write(b"abc") == 3
