"""quorum.server.spools: spools are reused for the next upload, and a reused spool holds exactly
the new upload."""

from __future__ import annotations

import asyncio
import pathlib
import resource
import threading
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, cast

import numpy as np
import pytest

from quorum.errors import UploadRejected
from quorum.proto import federation_pb2 as pb
from quorum.server.federation import _receive
from quorum.server.spools import SpoolPool, fit
from quorum.server.validation import Received, check_blob
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile


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


IDLE_S = 60.0  # the server's transfer_idle_timeout_s: no test here waits for it


async def _messages(chunks: list[bytes]) -> AsyncIterator[pb.UploadMessage]:
    for chunk in chunks:
        yield pb.UploadMessage(chunk=chunk)


def test_an_upload_arrives_whole_in_a_spool(tmp_path: pathlib.Path) -> None:
    pool = SpoolPool(tmp_path, keep=1)
    data = blobs.encode({"w": np.arange(300_000, dtype=np.float32)})
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    upload = asyncio.run(_receive(_messages(chunks), len(data), "", pool, IDLE_S))
    assert (upload.size, upload.digest) == (len(data), blobs.digest(data))
    assert upload.read() == bytearray(data)
    upload.close()
    assert pool.idle == 1


@pytest.mark.parametrize("bad", [None, np.nan, -np.inf])
def test_an_uploads_values_are_checked_as_it_arrives(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, bad: float | None
) -> None:
    """In chunks of an odd size, which cut values in two: the check of the received upload
    takes the verdict of its arrival (the spool's blocks cannot be read here), and refuses a
    NaN or infinity."""
    pool = SpoolPool(tmp_path, keep=1)
    params: dict[str, np.ndarray] = {
        "h": np.ones(7, np.float16),
        "w": np.arange(100_000, dtype=np.float32),
    }
    if bad is not None:
        params["w"][54_321] = bad
    data = blobs.encode(params)
    layout = blobs.read_layout(data)
    chunks = [data[i : i + 65_537] for i in range(0, len(data), 65_537)]
    upload = asyncio.run(_receive(_messages(chunks), len(data), "", pool, IDLE_S))

    def unreadable(*args: object, **kwargs: object) -> Iterator[tuple[int, np.ndarray]]:
        raise AssertionError("the upload was read back for its check")

    monkeypatch.setattr(BlobFile, "values", unreadable)
    try:
        if bad is None:
            assert check_blob(upload, blobs.digest(data), layout).all_finite()
        else:
            with pytest.raises(UploadRejected, match="NaN or infinite") as refused:
                check_blob(upload, blobs.digest(data), layout)
            assert refused.value.code == "non_finite"
    finally:
        upload.close()


@pytest.mark.parametrize(
    ("declared", "code"), [(10, "oversized"), (10**6, "size_mismatch")], ids=["long", "short"]
)
def test_a_refused_upload_gives_its_spool_back(
    tmp_path: pathlib.Path, declared: int, code: str
) -> None:
    pool = SpoolPool(tmp_path, keep=1)
    with pytest.raises(UploadRejected) as refused:
        asyncio.run(_receive(_messages([b"x" * 100, b"y" * 100]), declared, "", pool, IDLE_S))
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
            asyncio.run(
                _receive(_messages([b"x" * 100, b"y" * 100, b"z" * 100]), 300, "", pool, IDLE_S)
            )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert refused.value.code == "spool_failed"
    assert "could not keep the upload" in refused.value.message
    assert pool.idle == 0


def test_a_chunk_the_spool_takes_only_part_of_is_not_taken_for_the_upload(
    tmp_path: pathlib.Path,
) -> None:
    """A write may take fewer bytes than given (the disk filling up: a file size limit here)
    with no error; on the last chunk nothing else would fail. The spool, a reused one that still
    holds another upload's bytes, must not pass for the upload its digest was taken over."""
    pool = SpoolPool(tmp_path, keep=1)
    _upload(pool, b"a" * 300).close()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150, hard))
    try:
        with pytest.raises(UploadRejected) as refused:
            asyncio.run(_receive(_messages([b"x" * 100, b"y" * 100]), 200, "", pool, IDLE_S))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert refused.value.code == "spool_failed"


class _GatedSpool:
    """A spool whose writes wait for `gate`: a chunk's write still running when the upload is
    cancelled."""

    def __init__(self, file: BinaryIO, events: list[str]) -> None:
        self.file = file
        self.events = events
        self.entered = threading.Event()
        self.gate = threading.Event()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def write(self, data: bytes) -> int:
        self.entered.set()
        self.gate.wait(timeout=30)
        written = self.file.write(data)
        self.events.append("written")
        return written


class _GatedPool(SpoolPool):
    def __init__(self, directory: pathlib.Path) -> None:
        super().__init__(directory, keep=1)
        self.events: list[str] = []
        self.spool: _GatedSpool | None = None

    def take(self) -> BinaryIO:
        self.spool = _GatedSpool(super().take(), self.events)
        return cast(BinaryIO, self.spool)

    def give(self, file: BinaryIO) -> None:
        self.events.append("given")
        super().give(cast(_GatedSpool, file).file)


def test_a_cancelled_upload_gives_its_spool_back_once_its_last_write_is_over(
    tmp_path: pathlib.Path,
) -> None:
    """The site hangs up while a chunk is being written: the spool goes back for the next
    upload, and only once nothing writes it any more."""
    pool = _GatedPool(tmp_path)

    async def scenario() -> None:
        drained = asyncio.Event()

        async def messages() -> AsyncIterator[pb.UploadMessage]:
            yield pb.UploadMessage(chunk=b"x" * 100)
            drained.set()  # the upload now waits for that chunk's write

        receiving = asyncio.ensure_future(_receive(messages(), 100, "", pool, IDLE_S))
        await drained.wait()
        assert pool.spool is not None
        await asyncio.to_thread(pool.spool.entered.wait, 30)
        receiving.cancel()
        asyncio.get_running_loop().call_soon(pool.spool.gate.set)
        with pytest.raises(asyncio.CancelledError):
            await receiving

    asyncio.run(scenario())
    assert pool.events == ["written", "given"]
    assert pool.idle == 1


def test_a_spool_that_cannot_be_made_refuses_the_upload(tmp_path: pathlib.Path) -> None:
    """The spool folder cannot be made (a file is in its place): the upload is refused with
    its reason, as when the spool cannot be written, not failed with an OSError."""
    (tmp_path / "uploads").write_bytes(b"")
    pool = SpoolPool(tmp_path / "uploads", keep=1)
    with pytest.raises(UploadRejected) as refused:
        asyncio.run(_receive(_messages([b"x" * 100]), 100, "", pool, IDLE_S))
    assert refused.value.code == "spool_failed"
    assert pool.idle == 0
