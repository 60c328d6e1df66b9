"""Unit tests of quorum.wire.blobs.Pieces: a site's upload hashed and chunked from its tensors,
byte for byte the blob `encode` makes, without a copy of the model."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save as st_save

from quorum.wire import blobs

DTYPES = ["<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "i1", "<u4", "u1", "?"]

tensors = st.dictionaries(
    st.text("abcxyz._", min_size=1, max_size=6),
    st.sampled_from(DTYPES).flatmap(
        lambda dtype: hnp.arrays(
            dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)
        )
    ),
    max_size=6,
)


def _expected_chunks(data: bytes, size: int) -> list[bytes]:
    return [bytes(c) for c in blobs.chunks(data, size=size)]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(tensors, st.integers(1, 97), st.booleans())
def test_pieces_are_the_encoded_blob_hashed_and_chunked_alike(
    params: dict[str, np.ndarray], size: int, labelled: bool
) -> None:
    metadata = {"round": "3"} if labelled else None
    encoded = blobs.encode(params, metadata)
    pieces = blobs.pieces(params, metadata)
    assert pieces.join() == encoded
    assert pieces.size == len(encoded)
    assert pieces.digest() == blobs.digest(encoded)
    # Chunk boundaries fall anywhere: inside the header, inside tensors, across several small
    # or empty tensors at once.
    assert list(pieces.chunks(size)) == _expected_chunks(encoded, size)


def test_mixed_dtypes_empty_and_odd_tensors_match_safetensors_chunk_by_chunk() -> None:
    rng = np.random.default_rng(5)
    params = {
        "big": rng.standard_normal(3 * blobs.CHUNK_BYTES // 4 + 3).astype(np.float32),
        "wide": rng.standard_normal((7, 5)),
        "half": rng.standard_normal(11).astype(np.float16),
        "count": np.arange(13, dtype=np.int64),
        "flag": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(2.5, np.float32),
        "bytes": np.arange(5, dtype=np.uint8),
    }
    safetensors = st_save(params)
    pieces = blobs.pieces(params)
    assert pieces.join() == safetensors
    assert pieces.digest() == blobs.digest(safetensors)
    got = list(pieces.chunks())
    assert [len(c) for c in got[:-1]] == [blobs.CHUNK_BYTES] * (len(got) - 1)
    assert 0 < len(got[-1]) <= blobs.CHUNK_BYTES
    assert got == _expected_chunks(safetensors, blobs.CHUNK_BYTES)


def test_arrays_neither_little_endian_nor_contiguous_are_sent_as_their_values() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    params = {
        "transposed": base.T,
        "strided": base[:, ::2],
        "big_endian": np.arange(5, dtype=">i4"),
        "fortran": np.asfortranarray(base),
    }
    canonical = {k: np.ascontiguousarray(v, v.dtype.newbyteorder("<")) for k, v in params.items()}
    assert blobs.pieces(params).join() == st_save(canonical)
    assert list(blobs.pieces(params).chunks(10)) == _expected_chunks(st_save(canonical), 10)


def test_pieces_read_the_tensors_own_memory() -> None:
    # Not a copy: a value changed after the blob is planned is the value sent (hence the rule
    # that the trained tensors stay as they are until the upload is over).
    weights = np.zeros(1000, np.float32)
    pieces = blobs.pieces({"w": weights})
    weights[999] = 7.0
    assert blobs.decode(pieces.join())["w"][999] == 7.0


def test_a_single_buffer_is_its_own_blob() -> None:
    # SecAgg+'s masked vector and gossip parcels are one buffer each: sent as they are.
    data = bytearray(blobs.encode({"m": np.arange(300_000, dtype=np.uint32)}))
    pieces = blobs.Pieces(memoryview(data))
    assert pieces.size == len(data)
    assert pieces.digest() == blobs.digest(data)
    assert list(pieces.chunks()) == _expected_chunks(bytes(data), blobs.CHUNK_BYTES)
    assert list(blobs.Pieces().chunks()) == []
    assert blobs.Pieces(b"", b"", b"ab", b"").join() == b"ab"


def test_hashing_and_chunking_a_model_holds_a_chunk_not_a_copy() -> None:
    model = {f"w{i}": np.full(4 * blobs.CHUNK_BYTES + i, i, np.float32) for i in range(4)}
    model_bytes = sum(v.nbytes for v in model.values())  # 64 MiB
    tracemalloc.start()
    try:
        pieces = blobs.pieces(model)
        digest = pieces.digest()
        sent = 0
        for chunk in pieces.chunks():
            sent += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent == pieces.size and digest == blobs.digest(blobs.encode(model))
    # One chunk and its bookkeeping at a time; `encode` would have allocated 64 MiB.
    assert peak < 4 * blobs.CHUNK_BYTES < model_bytes / 16


@pytest.mark.parametrize("size", [1, 8, blobs.CHUNK_BYTES])
def test_chunks_are_full_but_the_last(size: int) -> None:
    pieces = blobs.pieces({"a": np.ones(9, np.int8), "b": np.ones(17, np.float32)})
    lengths = [len(c) for c in pieces.chunks(size)]
    assert sum(lengths) == pieces.size
    assert all(n == size for n in lengths[:-1]) and 0 < lengths[-1] <= size
