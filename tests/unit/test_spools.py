"""quorum.server.spools: spools are reused for the next upload, and a reused spool holds exactly
the new upload."""

from __future__ import annotations

import asyncio
import pathlib
import resource
from collections.abc import AsyncIterator

import numpy as np
import pytest

from quorum.errors import UploadRejected
from quorum.proto import federation_pb2 as pb
from quorum.server.federation import _receive
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


async def _messages(chunks: list[bytes]) -> AsyncIterator[pb.UploadMessage]:
    for chunk in chunks:
        yield pb.UploadMessage(chunk=chunk)


def test_an_upload_arrives_whole_in_a_spool(tmp_path: pathlib.Path) -> None:
    pool = SpoolPool(tmp_path, keep=1)
    data = blobs.encode({"w": np.arange(300_000, dtype=np.float32)})
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    upload = asyncio.run(_receive(_messages(chunks), len(data), pool))
    assert (upload.size, upload.digest) == (len(data), blobs.digest(data))
    assert upload.read() == bytearray(data)
    upload.close()
    assert pool.idle == 1


@pytest.mark.parametrize(
    ("declared", "code"), [(10, "oversized"), (10**6, "size_mismatch")], ids=["long", "short"]
)
def test_a_refused_upload_gives_its_spool_back(
    tmp_path: pathlib.Path, declared: int, code: str
) -> None:
    pool = SpoolPool(tmp_path, keep=1)
    with pytest.raises(UploadRejected) as refused:
        asyncio.run(_receive(_messages([b"x" * 100, b"y" * 100]), declared, pool))
    assert refused.value.code == code
    assert pool.idle == 1  # kept for the next upload, which writes over it


def test_a_spool_that_cannot_be_written_refuses_the_upload(tmp_path: pathlib.Path) -> None:
    """The spool's disk is full (a file size limit here): the upload is refused with a message,
    and the spool closed, not kept."""
    pool = SpoolPool(tmp_path, keep=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150, hard))
    try:
        with pytest.raises(UploadRejected) as refused:
            asyncio.run(_receive(_messages([b"x" * 100, b"y" * 100, b"z" * 100]), 300, pool))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert refused.value.code == "spool_failed"
    assert "could not keep the upload" in refused.value.message
    assert pool.idle == 0
