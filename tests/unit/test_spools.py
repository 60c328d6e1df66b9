"""quorum.server.spools: spools are reused for the next upload, and a reused spool holds exactly
the new upload."""

from __future__ import annotations

import pathlib

import numpy as np

from quorum.server.spools import SpoolPool, fit
from quorum.server.validation import Received
from quorum.wire import blobs


def _upload(pool: SpoolPool, data: bytes) -> Received:
    file = pool.take()
    file.write(data)
    fit(file, len(data))
    return Received(file, blobs.digest(data), pool.give)


def test_a_spool_is_reused_and_holds_exactly_the_next_upload(tmp_path: pathlib.Path) -> None:
    pool = SpoolPool(tmp_path / "uploads", keep=1)
    big = blobs.encode({"w": np.arange(1000, dtype=np.float32)})
    small = blobs.encode({"w": np.full(10, 7, dtype=np.float32)})
    first = _upload(pool, big)
    first.close()
    assert pool.idle == 1
    second = _upload(pool, small)
    assert pool.idle == 0  # the idle spool was taken, not a new one made
    assert second.size == len(small) and second.read() == bytearray(small)
    opened = second.open()
    assert opened.size == len(small)
    assert np.array_equal(np.concatenate([v.copy() for _, v in opened.blocks()]), np.full(10, 7))
    second.close()
    # Spools have no names: nothing is left in the folder.
    assert list((tmp_path / "uploads").iterdir()) == []


def test_the_pool_keeps_at_most_keep_idle_spools(tmp_path: pathlib.Path) -> None:
    pool = SpoolPool(tmp_path, keep=2)
    files = [pool.take() for _ in range(3)]
    for file in files:
        pool.give(file)
    assert pool.idle == 2
    assert files[2].closed and not files[0].closed
    closed = pool.take()
    closed.close()
    pool.give(closed)  # a spool closed on a disk error is not kept
    assert pool.idle == 1
