"""Unit tests of quorum.wire.blobfiles: blobs written as streams, read back from their files."""

from __future__ import annotations

import asyncio
import pathlib
import sys

import numpy as np
import pytest

from quorum.errors import BlobError
from quorum.server.checkpoints import Checkpoints
from quorum.wire import blobfiles, blobs
from quorum.wire.blobfiles import BlobFile, BlobWriter

PARAMS = {
    "w": np.arange(10, dtype=np.float32).reshape(2, 5),
    "steps": np.array([7, -3], dtype=np.int64),
    "b": np.array([0.5, np.float32(-1.25)], dtype=np.float32),
}


def _written(path: pathlib.Path, params: dict[str, np.ndarray] = PARAMS) -> BlobFile:
    with BlobWriter(path) as writer:
        blobs.write(params, writer)
        return writer.finish()


def test_a_written_file_is_the_encoded_blob_with_its_digest(tmp_path: pathlib.Path) -> None:
    blob = _written(tmp_path / "m")
    data = blobs.encode(PARAMS)
    assert (tmp_path / "m").read_bytes() == data == blob.read_all()
    assert blob.digest == blobs.digest(data) == BlobFile(tmp_path / "m").digest
    assert len(blob) == len(data) and blob.layout == blobs.read_layout(data)
    assert b"".join(blob.chunks(offset=5, size=7)) == data[5:]
    np.testing.assert_array_equal(blob.flat(), blobs.as_flat(data, blob.layout))
    for name, value in blob.params().items():
        np.testing.assert_array_equal(value, PARAMS[name])


@pytest.mark.parametrize("block_bytes", [4, 8, 12, 1 << 20])
def test_values_come_in_blocks_in_as_flat_order(tmp_path: pathlib.Path, block_bytes: int) -> None:
    blob = _written(tmp_path / "m")
    parts = [(start, values.copy()) for start, values in blob.values(block_bytes)]
    assert [start for start, _ in parts] == list(
        np.cumsum([0] + [v.shape[0] for _, v in parts[:-1]])
    )
    np.testing.assert_array_equal(np.concatenate([v for _, v in parts]), blob.flat())
    assert all(v.dtype == np.float64 for _, v in parts)  # mixed dtypes: float64, as as_flat
    assert all(v.nbytes <= max(block_bytes, 8) for _, v in parts)  # in float64 bytes


@pytest.mark.parametrize("block_bytes", [8, 24, 1 << 20])
def test_values_between_two_positions_are_that_slice_of_the_flat_values(
    tmp_path: pathlib.Path, block_bytes: int
) -> None:
    """Every slice, across the tensors' boundaries (w: 0-10, steps: 10-12, b: 12-14): blocks
    at its positions, as `blocks_between` gives them to a fold's threads."""
    blob = _written(tmp_path / "m")
    flat = blob.flat()
    for start in range(flat.shape[0] + 1):
        for stop in range(start, flat.shape[0] + 1):
            parts = [(at, values.copy()) for at, values in blob.blocks_between(start, stop)]
            assert [at for at, _ in parts] == list(
                start + np.cumsum([0] + [v.shape[0] for _, v in parts[:-1]])
            ) or not parts
            got = np.concatenate([v for _, v in parts]) if parts else np.zeros(0)
            np.testing.assert_array_equal(got, flat[start:stop])


def test_a_single_float_dtype_is_read_in_its_own_dtype(tmp_path: pathlib.Path) -> None:
    blob = _written(tmp_path / "m", {"a": np.ones(5, np.float32), "b": np.zeros(3, np.float32)})
    assert {v.dtype for _, v in blob.values(8)} == {np.dtype(np.float32)}
    assert blob.all_finite()
    nan = _written(tmp_path / "n", {"a": np.ones(5, np.float32), "b": np.array([np.inf])})
    assert not nan.all_finite()


def test_an_open_file_outlives_its_path(tmp_path: pathlib.Path) -> None:
    """A served model keeps its bytes when its checkpoint is pruned or its round rewritten."""
    blob = _written(tmp_path / "m")
    again = _written(tmp_path / "m", {"x": np.zeros(3, np.float32)})  # the same path, anew
    assert blob.read_all() == blobs.encode(PARAMS)
    (tmp_path / "m").unlink()
    assert blob.read_all() == blobs.encode(PARAMS)
    assert again.layout.describe() == {"x": ("F32", (3,))}


def test_a_writer_left_unfinished_removes_its_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RuntimeError), BlobWriter(tmp_path / "m") as writer:
        writer.write(b"partial")
        raise RuntimeError("the step failed")
    assert not (tmp_path / "m").exists()


def test_a_file_that_is_not_a_blob_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(blobs.encode(PARAMS)[:-4])
    with pytest.raises(BlobError, match="tensors cover"):
        BlobFile(path)


def test_a_staged_model_is_served_then_saved_in_place(tmp_path: pathlib.Path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=2)
    staged = checkpoints.stage_params("run", 1, PARAMS)
    assert not checkpoints.exists("run", 1)  # staged is not saved: a crash leaves no round 1
    checkpoints.save("run", 1, staged, {"t": np.array([1])})
    assert staged.path == checkpoints.model_path("run", 1)
    model, state = checkpoints.open("run", 1)
    assert model.digest == staged.digest == blobs.digest(blobs.encode(PARAMS))
    assert state["t"].tolist() == [1]
    with pytest.raises(ValueError, match="not the staged model of round 2"):
        checkpoints.save("run", 2, model, {})


def test_a_writer_closed_without_opening_keeps_its_blob(tmp_path: pathlib.Path) -> None:
    with BlobWriter(tmp_path / "state") as writer:
        blobs.write(PARAMS, writer)
        writer.close()
    assert (tmp_path / "state").read_bytes() == blobs.encode(PARAMS)


def test_a_writer_that_hashes_nothing_leaves_the_digests_to_the_file(
    tmp_path: pathlib.Path,
) -> None:
    with BlobWriter(tmp_path / "state", hashed=False) as writer:
        assert len(writer.steps()) == 1  # the write alone
        blobs.write(PARAMS, writer)
        written = writer.finish()
    assert written.read_all() == blobs.encode(PARAMS)
    assert written.digest == blobs.digest(blobs.encode(PARAMS))  # read from the file


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range(2) is Linux's")
def test_a_writer_starts_the_writeback_of_its_bytes_as_they_come(tmp_path: pathlib.Path) -> None:
    """The binding of sync_file_range(2) is found and accepted by the kernel (its failures
    are not reported: the fsync at close makes the bytes durable in any case); a blob written
    across several writebacks is whole, with its digest."""
    sync_file_range = blobfiles._SYNC_FILE_RANGE
    assert sync_file_range is not None
    values = np.arange(3 * blobfiles.WRITEBACK_BYTES // 4 + 5, dtype=np.float32)
    with BlobWriter(tmp_path / "m") as writer:
        blobs.write({"w": values}, writer)
        assert sync_file_range(writer._file.fileno(), 0, 0, blobfiles._SYNC_FILE_RANGE_WRITE) == 0
        written = writer.finish()
    data = blobs.encode({"w": values})
    assert (tmp_path / "m").read_bytes() == data
    assert written.digest == blobs.digest(data)


@pytest.mark.parametrize("offset", [0, 1, blobs.CHUNK_BYTES + 5])
def test_a_stream_yields_the_files_chunks_read_in_worker_threads(
    tmp_path: pathlib.Path, offset: int
) -> None:
    with BlobWriter(tmp_path / "m") as writer:
        blobs.write({"w": np.arange(5 * 2**18 + 7, dtype=np.float32)}, writer)  # 5 MiB and a bit
        model = writer.finish()

    async def streamed() -> list[bytes]:
        return [chunk async for chunk in model.stream(offset)]

    assert asyncio.run(streamed()) == list(model.chunks(offset))
    assert b"".join(asyncio.run(streamed())) == model.read_all()[offset:]
