"""Unit tests of quorum.wire.blobs: safetensors blobs, hostile headers, flat views, chunks."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from quorum.errors import BlobError
from quorum.wire import blobs
from quorum.wire.write_behind import write_flat

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _raw(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    """A blob built by hand: 8-byte length, header bytes, data."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def _one(dtype: Any = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    return {
        "t": {
            "dtype": dtype,
            "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets,
        }
    }


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "layer.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "layer.bias": rng.standard_normal(4).astype(np.float32),
        "scale": np.array([2.5], dtype=np.float32),
    }


# --- encode / decode ---------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    np.arange(12, dtype=np.float64).reshape(3, 4) / 7,
    np.linspace(-1, 1, 10, dtype=np.float32),
    np.array([0.5, -2.0, 65504.0], dtype=np.float16),
    np.array([-(2**62), 0, 2**62], dtype=np.int64),
    np.arange(-5, 5, dtype=np.int32).reshape(2, 5),
    np.array([-32768, 32767], dtype=np.int16),
    np.array([-128, 127], dtype=np.int8),
    np.array([0, 255], dtype=np.uint8),
    np.array([True, False, True]),
    np.array([3.25], dtype=np.float32),  # one element
    np.zeros((0,), dtype=np.float32),  # empty
    np.zeros((2, 0, 3), dtype=np.float64),  # empty with a zero inner dimension
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
]


@pytest.mark.parametrize(
    "value", ROUND_TRIP_CASES, ids=[f"{v.dtype}-{v.shape}" for v in ROUND_TRIP_CASES]
)
def test_encode_decode_round_trip(value: np.ndarray) -> None:
    data = blobs.encode({"x": value})
    out = blobs.decode(data)
    assert list(out) == ["x"]
    assert out["x"].dtype == value.dtype
    assert out["x"].shape == value.shape
    np.testing.assert_array_equal(out["x"], value)


@pytest.mark.parametrize(
    "value",
    [np.array(3.25, dtype=np.float32), np.array(7, dtype=np.int64), np.float64(0.5)],
    ids=["f32-0d", "i64-0d", "numpy-scalar"],
)
def test_encode_keeps_zero_dimensional_tensors_zero_dimensional(value: np.ndarray) -> None:
    data = blobs.encode({"x": value, "y": np.ones(2, np.float32)})
    assert blobs.read_layout(data).describe()["x"][1] == ()
    out = blobs.decode(data)
    assert out["x"].shape == ()
    assert out["x"] == value
    layout = blobs.read_layout(data)
    assert blobs.from_flat(blobs.as_flat(data, layout), layout)["x"].shape == ()


def test_zero_dimensional_tensors_in_a_hand_built_blob_decode_as_0d() -> None:
    blob = _raw(_one(dtype="F64", shape=[], offsets=[0, 8]), np.array([1.5]).tobytes())
    layout = blobs.read_layout(blob)
    assert layout.tensors[0].shape == ()
    assert layout.numel == 1
    value = blobs.decode(blob, layout)["t"]
    assert value.shape == ()
    assert float(value) == 1.5
    back = blobs.from_flat(blobs.as_flat(blob, layout), layout)
    assert back["t"].shape == ()


def test_round_trip_of_several_tensors_of_mixed_dtypes() -> None:
    params = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, 2, 3], dtype=np.int64),
        "c": np.array([1.5], dtype=np.float64),
        "d": np.zeros((0, 4), dtype=np.float16),
        "e": np.array([True, False]),
    }
    data = blobs.encode(params)
    out = blobs.decode(data)
    assert set(out) == set(params)
    for name, value in params.items():
        assert out[name].dtype == value.dtype, name
        assert out[name].shape == value.shape, name
        np.testing.assert_array_equal(out[name], value)
    layout = blobs.read_layout(data)
    assert layout.size == len(data)
    assert layout.numel == 6 + 3 + 1 + 0 + 2
    assert layout.describe() == {
        "a": ("F32", (2, 3)),
        "b": ("I64", (3,)),
        "c": ("F64", (1,)),
        "d": ("F16", (0, 4)),
        "e": ("BOOL", (2,)),
    }
    # the layout lists tensors in byte order, back to back
    starts = [t.start for t in layout.tensors]
    assert starts == sorted(starts)
    assert all(a.end == b.start for a, b in zip(layout.tensors, layout.tensors[1:], strict=False))


def test_encode_makes_non_contiguous_and_big_endian_inputs_portable() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    transposed = base.T  # not C-contiguous
    big = np.array([1.5, -2.25], dtype=">f8")
    out = blobs.decode(blobs.encode({"t": transposed, "big": big}))
    np.testing.assert_array_equal(out["t"], transposed)
    np.testing.assert_array_equal(out["big"], big)
    assert out["big"].dtype == np.dtype("<f8")


def test_decode_returns_read_only_views_over_the_buffer() -> None:
    data = blobs.encode(_model())
    buffer = np.frombuffer(data, dtype=np.uint8)
    out = blobs.decode(data)
    for value in out.values():
        assert np.shares_memory(value, buffer)
        assert not value.flags.writeable


def test_metadata_is_kept_out_of_the_tensors() -> None:
    data = blobs.encode(_model(), metadata={"round": "3", "run": "run-x"})
    layout = blobs.read_layout(data)
    assert {t.name for t in layout.tensors} == set(_model())
    assert "__metadata__" not in blobs.decode(data)


@pytest.mark.parametrize(
    "value",
    [np.array([1 + 2j]), np.array([1, 2], dtype=np.uint16), np.array([1], dtype=np.uint64)],
    ids=["complex", "uint16", "uint64"],
)
def test_encode_refuses_unsupported_dtypes_naming_the_tensor(value: np.ndarray) -> None:
    with pytest.raises(BlobError, match=r"'odd'.*unsupported dtype"):
        blobs.encode({"fine": np.zeros(2, np.float32), "odd": value})


def test_empty_model_encodes_to_an_empty_layout() -> None:
    data = blobs.encode({})
    layout = blobs.read_layout(data)
    assert layout.tensors == ()
    assert layout.numel == 0
    assert layout.size == len(data)
    assert blobs.decode(data) == {}
    assert blobs.as_flat(data, layout).size == 0


# --- read_layout refuses hostile blobs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", r"blob of 0 bytes is shorter than the 8-byte header length"),
        (b"\x05\x00\x00", r"blob of 3 bytes is shorter than the 8-byte header length"),
        (struct.pack("<Q", 1000) + b"{}", r"header length 1000 does not fit a blob of 10 bytes"),
        (struct.pack("<Q", 2**64 - 1) + b"{}", r"header length \d+ does not fit"),
        (_raw(b"{not json"), r"header is not valid JSON"),
        (_raw(b"\xff\xfe\x00garbage"), r"header is not valid JSON"),
        (_raw(b"[1, 2]"), r"header is not a JSON object"),
        (_raw(b'"text"'), r"header is not a JSON object"),
        (_raw(b"null"), r"header is not a JSON object"),
        (_raw({"t": [1, 2]}), r"tensor 't': header entry is not an object"),
        (_raw(_one(dtype="BF16"), b"\0" * 4), r"tensor 't': unsupported dtype 'BF16'"),
        (_raw(_one(dtype="f32"), b"\0" * 8), r"tensor 't': unsupported dtype 'f32'"),
        (_raw(_one(dtype=None), b"\0" * 8), r"tensor 't': unsupported dtype None"),
        (_raw(_one(dtype=4), b"\0" * 8), r"tensor 't': unsupported dtype 4"),
        (_raw(_one(shape=[-2]), b""), r"tensor 't': shape \[-2\] is not a list of non-negative"),
        (_raw(_one(shape=[2.0]), b"\0" * 8), r"tensor 't': shape \[2.0\] is not a list"),
        (_raw(_one(shape=[True, 2]), b"\0" * 8), r"tensor 't': shape \[True, 2\] is not a list"),
        (_raw(_one(shape="2"), b"\0" * 8), r"tensor 't': shape '2' is not a list"),
        (_raw(_one(shape=None), b"\0" * 8), r"tensor 't': shape None is not a list"),
        (_raw(_one(offsets=[0]), b"\0" * 8), r"tensor 't': data_offsets \[0\] is not a pair"),
        (_raw(_one(offsets=[0, 8.0]), b"\0" * 8), r"data_offsets \[0, 8.0\] is not a pair"),
        (_raw(_one(offsets=[False, 8]), b"\0" * 8), r"data_offsets \[False, 8\] is not a pair"),
        (_raw(_one(offsets="0-8"), b"\0" * 8), r"data_offsets '0-8' is not a pair"),
        # offsets that do not match shape × itemsize
        (_raw(_one(offsets=[0, 4]), b"\0" * 4), r"data_offsets \[0, 4\] do not hold 8 bytes"),
        (_raw(_one(offsets=[0, 12]), b"\0" * 12), r"data_offsets \[0, 12\] do not hold 8 bytes"),
        (_raw(_one(offsets=[-8, 0]), b""), r"data_offsets \[-8, 0\] do not hold 8 bytes"),
        (
            _raw(_one(dtype="F64", shape=[3], offsets=[0, 12]), b"\0" * 12),
            r"do not hold 24 bytes of F64 \(3,\)",
        ),
        # the data is shorter or longer than the tensors
        (_raw(_one(), b"\0" * 4), r"tensors cover 8 bytes but the blob holds 4 after its header"),
        (_raw(_one(), b"\0" * 9), r"tensors cover 8 bytes but the blob holds 9 after its header"),
        (_raw({}, b"\0"), r"tensors cover 0 bytes but the blob holds 1 after its header"),
    ],
)
def test_read_layout_refuses_hostile_blobs(blob: bytes, message: str) -> None:
    with pytest.raises(BlobError, match=message):
        blobs.read_layout(blob)


def test_read_layout_refuses_overlapping_tensors() -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(BlobError, match=r"tensor 'b' starts at byte 4, expected 8"):
        blobs.read_layout(_raw(header, b"\0" * 12))


def test_read_layout_refuses_two_tensors_over_the_same_bytes() -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
    }
    with pytest.raises(BlobError, match=r"starts at byte 0, expected 8"):
        blobs.read_layout(_raw(header, b"\0" * 8))


def test_read_layout_refuses_a_gap_between_tensors() -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    }
    with pytest.raises(BlobError, match=r"tensor 'b' starts at byte 12, expected 8"):
        blobs.read_layout(_raw(header, b"\0" * 20))


def test_read_layout_refuses_a_gap_before_the_first_tensor() -> None:
    with pytest.raises(BlobError, match=r"tensor 't' starts at byte 4, expected 0"):
        blobs.read_layout(_raw(_one(offsets=[4, 12]), b"\0" * 12))


def test_read_layout_accepts_a_hand_built_blob_in_any_header_order() -> None:
    header = {
        "__metadata__": {"k": "v"},
        "late": {"dtype": "I8", "shape": [3], "data_offsets": [8, 11]},
        "early": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    }
    data = b"".join([np.array([1.0, 2.0], "<f4").tobytes(), bytes([1, 2, 255])])
    blob = _raw(header, data)
    layout = blobs.read_layout(blob)
    assert [t.name for t in layout.tensors] == ["early", "late"]
    assert layout.data_offset == len(blob) - 11
    out = blobs.decode(blob, layout)
    np.testing.assert_array_equal(out["early"], [1.0, 2.0])
    np.testing.assert_array_equal(out["late"], [1, 2, -1])


@pytest.mark.parametrize("dtype", [["F32"], {"x": 1}], ids=["list", "object"])
def test_read_layout_refuses_an_unhashable_dtype_with_blob_error(dtype: Any) -> None:
    with pytest.raises(BlobError, match=r"tensor 't': unsupported dtype"):
        blobs.read_layout(_raw(_one(dtype=dtype), b"\0" * 8))


def test_read_layout_refuses_a_deeply_nested_header_with_blob_error() -> None:
    with pytest.raises(BlobError):
        blobs.read_layout(_raw(b"[" * 100_000))


def test_read_layout_refuses_an_overlong_integer_with_blob_error() -> None:
    header = b'{"t": {"dtype": "F32", "shape": [' + b"1" * 5000 + b'], "data_offsets": [0, 4]}}'
    with pytest.raises(BlobError):
        blobs.read_layout(_raw(header, b"\0" * 4))


@pytest.mark.parametrize(
    ("shape", "nbytes"), [([1] * 100, 4), ([0, 2**70], 0)], ids=["100-dims", "huge-dim"]
)
def test_read_layout_refuses_shapes_that_decode_cannot_build(shape: list[int], nbytes: int) -> None:
    blob = _raw(_one(shape=shape, offsets=[0, nbytes]), b"\0" * nbytes)
    with pytest.raises(BlobError):
        layout = blobs.read_layout(blob)
        blobs.decode(blob, layout)


# --- fuzzing: read_layout only ever raises BlobError -------------------------------------------


def _check_read_layout(data: bytes) -> None:
    try:
        layout = blobs.read_layout(data)
    except BlobError as exc:
        assert str(exc)  # every refusal says what was wrong
        return
    # whatever it accepts is self-consistent and decodable
    assert layout.size == len(data)
    assert 8 <= layout.data_offset <= len(data)
    for t in layout.tensors:
        assert 0 <= t.start <= t.end
    out = blobs.decode(data, layout)
    assert [out[t.name].shape for t in layout.tensors] == [t.shape for t in layout.tensors]
    blobs.all_finite(data, layout)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_blob_error(data: bytes) -> None:
    _check_read_layout(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_header_with_a_fitting_length_only_raises_blob_error(header: bytes) -> None:
    _check_read_layout(_raw(header))


_VALID = blobs.encode(
    {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "i": np.array([1, 2], dtype=np.int64),
        "z": np.array(0.5, dtype=np.float16),
    },
    metadata={"round": "1"},
)


@FUZZ
@given(st.data())
def test_mutated_valid_blob_only_raises_blob_error(data: st.DataObject) -> None:
    blob = bytearray(_VALID)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)), label="pos")
        if kind == "flip" and blob:
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and blob:
            blob[pos] = data.draw(st.sampled_from(b'0123456789-.,[]{}":eE \x00\xff'))
        elif kind == "truncate":
            del blob[pos:]
        elif kind == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and blob:
            del blob[pos]
    _check_read_layout(bytes(blob))


@FUZZ
@given(st.data())
def test_mutated_header_values_only_raise_blob_error(data: st.DataObject) -> None:
    """Rewrites one field of a valid header with another (JSON-encodable) value."""
    header = json.loads(_VALID[8 : 8 + struct.unpack("<Q", _VALID[:8])[0]])
    body = _VALID[8 + struct.unpack("<Q", _VALID[:8])[0] :]
    name = data.draw(st.sampled_from(sorted(header)))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    scalar = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=6),
        st.sampled_from(["F32", "F64", "F16", "I64", "U8", "BOOL", "BF16"]),
    )
    lists = st.lists(st.integers(-3, 40), max_size=4)
    value = data.draw(st.one_of(scalar, lists))
    if name == "__metadata__":
        header[name] = value
    else:
        header[name][field] = value
    _check_read_layout(_raw(header, body))


# --- as_flat / from_flat / write_flat ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_as_flat_is_a_zero_copy_view_for_one_float_dtype(dtype: type) -> None:
    params = {k: v.astype(dtype) for k, v in _model().items()}
    data = bytearray(blobs.encode(params))
    layout = blobs.read_layout(data)
    flat = blobs.as_flat(data, layout)
    assert flat.dtype == np.dtype(dtype)
    assert flat.shape == (layout.numel,)
    assert np.shares_memory(flat, np.frombuffer(data, dtype=np.uint8))
    expected = np.concatenate([blobs.decode(data, layout)[t.name].ravel() for t in layout.tensors])
    np.testing.assert_array_equal(flat, expected)
    # a view: a change to the buffer shows through
    first = layout.tensors[0]
    before = flat[0].copy()
    data[layout.data_offset + first.start : layout.data_offset + first.start + flat.itemsize] = (
        np.array([before + 1], dtype=dtype).tobytes()
    )
    assert flat[0] == before + 1


def test_as_flat_of_a_bytes_blob_is_a_view_too() -> None:
    data = blobs.encode(_model())
    flat = blobs.as_flat(data, blobs.read_layout(data))
    assert np.shares_memory(flat, np.frombuffer(data, dtype=np.uint8))


def test_as_flat_copies_to_float64_for_mixed_dtypes() -> None:
    params = {
        "f": np.array([0.5, -1.5], dtype=np.float32),
        "i": np.array([[3, -4], [5, 6]], dtype=np.int64),
        "h": np.array(2.0, dtype=np.float16),
    }
    data = blobs.encode(params)
    layout = blobs.read_layout(data)
    flat = blobs.as_flat(data, layout)
    assert flat.dtype == np.float64
    assert not np.shares_memory(flat, np.frombuffer(data, dtype=np.uint8))
    decoded = blobs.decode(data, layout)
    expected = np.concatenate([decoded[t.name].ravel().astype(np.float64) for t in layout.tensors])
    np.testing.assert_array_equal(flat, expected)


def test_as_flat_of_one_integer_dtype_is_a_float64_copy() -> None:
    data = blobs.encode({"a": np.array([1, 2], np.int32), "b": np.array([3], np.int32)})
    layout = blobs.read_layout(data)
    flat = blobs.as_flat(data, layout)
    assert flat.dtype == np.float64
    np.testing.assert_array_equal(flat, [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "params",
    [
        _model(),
        {k: v.astype(np.float64) for k, v in _model().items()},
        {
            "f": np.array([0.5, -1.5], dtype=np.float32),
            "i": np.array([[3, -4], [5, 6]], dtype=np.int64),
            "b": np.array([True, False, True]),
            "u": np.array([0, 200, 255], dtype=np.uint8),
            "h": np.array([2.0], dtype=np.float16),
            "e": np.zeros((0, 3), dtype=np.float32),
        },
    ],
    ids=["float32", "float64", "mixed"],
)
def test_from_flat_and_write_flat_invert_as_flat(params: dict[str, np.ndarray]) -> None:
    data = blobs.encode(params)
    layout = blobs.read_layout(data)
    flat = blobs.as_flat(data, layout)
    back = blobs.from_flat(flat, layout)
    assert list(back) == [t.name for t in layout.tensors]
    for t in layout.tensors:
        assert back[t.name].dtype == params[t.name].dtype
        assert back[t.name].shape == params[t.name].shape
        np.testing.assert_array_equal(back[t.name], params[t.name])
    # Written block by block (odd blocks that cross tensors), the blob comes back byte for byte.
    out = io.BytesIO()
    blocks = [flat[i : i + 3] for i in range(0, flat.shape[0], 3)]
    write_flat([out.write], data[: layout.data_offset], layout, blocks)
    assert out.getvalue() == data


def test_write_flat_refuses_a_wrong_number_of_values() -> None:
    data = blobs.encode(_model())
    layout = blobs.read_layout(data)
    flat = blobs.as_flat(data, layout)
    with pytest.raises(BlobError, match="fewer values"):
        write_flat([io.BytesIO().write], b"", layout, [flat[:-1]])
    with pytest.raises(BlobError, match="more values"):
        write_flat([io.BytesIO().write], b"", layout, [flat, flat[:1]])


def test_encode_writes_what_safetensors_writes() -> None:
    """Byte for byte, for every dtype and safetensors' order of them, 0-d tensors, a
    non-contiguous and a big-endian array: readers of the format load Quorum's blobs."""
    params = {
        "b": np.arange(3, dtype=np.float32),
        "a": np.arange(2, dtype=">i8"),
        "c": np.array(1.5, np.float16),
        "d": np.array([True, False]),
        "e": np.arange(3, dtype=np.uint8),
        "f": np.arange(2, dtype=np.float64),
        "g": np.arange(2, dtype=np.int32),
        "h": np.arange(2, dtype=np.uint32),
        "i": np.arange(2, dtype=np.int16),
        "j": np.arange(2, dtype=np.int8),
        "t": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    }
    ours = blobs.encode(params, metadata={"round": "3"})
    theirs = st_save(
        {k: np.require(v, v.dtype.newbyteorder("<"), requirements="C") for k, v in params.items()},
        metadata={"round": "3"},
    )
    assert ours == theirs


def test_from_flat_rounds_to_integers_and_casts_to_each_dtype() -> None:
    data = blobs.encode({"f": np.zeros(2, np.float32), "i": np.zeros(3, np.int32)})
    layout = blobs.read_layout(data)
    order = [t.name for t in layout.tensors]
    values = {"f": [0.25, -1.75], "i": [2.6, -0.4, 7.5]}
    vector = np.concatenate([np.array(values[n], np.float64) for n in order])
    out = blobs.from_flat(vector, layout)
    assert out["f"].dtype == np.float32
    assert out["i"].dtype == np.int32
    np.testing.assert_array_equal(out["f"], [0.25, -1.75])
    np.testing.assert_array_equal(out["i"], [3, 0, 8])  # rint: halves go to even


@pytest.mark.parametrize("size", [0, 14, 16])
def test_from_flat_refuses_a_vector_of_the_wrong_length(size: int) -> None:
    layout = blobs.read_layout(blobs.encode(_model()))
    assert layout.numel == 17
    with pytest.raises(BlobError, match=rf"vector of {size} values does not fit a layout of 17"):
        blobs.from_flat(np.zeros(size), layout)


# --- all_finite --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["F16", "F32", "F64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_all_finite_detects_nan_and_inf_in_any_float_tensor(
    dtype: str, bad: float, where: str
) -> None:
    np_dtype = {"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype]
    params = {
        "a": np.ones(5, dtype=np.float32),
        "b": np.ones((2, 3), dtype=np_dtype),
        "c": np.arange(4, dtype=np.int64),
        "d": np.ones(3, dtype=np.float64),
    }
    data = blobs.encode(params)
    layout = blobs.read_layout(data)
    assert blobs.all_finite(data, layout)
    index = {"first": 0, "middle": 3, "last": 5}[where]
    params["b"].reshape(-1)[index] = bad
    bad_data = blobs.encode(params)
    assert not blobs.all_finite(bad_data, blobs.read_layout(bad_data))


def test_all_finite_ignores_integer_tensors_and_empty_ones() -> None:
    data = blobs.encode(
        {
            "i": np.array([np.iinfo(np.int64).max, -1], np.int64),
            "u": np.array([255], np.uint8),
            "e": np.zeros((0,), np.float32),
        }
    )
    assert blobs.all_finite(data, blobs.read_layout(data))


# --- chunks and digest -------------------------------------------------------------------------


def test_chunks_cover_the_bytes_from_an_offset() -> None:
    data = bytes(range(10))
    got = [bytes(c) for c in blobs.chunks(data, offset=4, size=3)]
    assert got == [bytes([4, 5, 6]), bytes([7, 8, 9])]
    assert [bytes(c) for c in blobs.chunks(data, size=4)] == [data[0:4], data[4:8], data[8:10]]
    assert list(blobs.chunks(data, offset=10, size=3)) == []
    assert list(blobs.chunks(b"", size=3)) == []


def test_chunks_default_to_one_mebibyte_views() -> None:
    data = bytearray(2 * blobs.CHUNK_BYTES + 5)
    parts = list(blobs.chunks(data))
    assert [len(p) for p in parts] == [blobs.CHUNK_BYTES, blobs.CHUNK_BYTES, 5]
    assert all(isinstance(p, memoryview) for p in parts)
    data[blobs.CHUNK_BYTES] = 7  # views, not copies
    assert parts[1][0] == 7


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=200), st.integers(0, 220), st.integers(1, 64))
def test_chunks_concatenate_to_the_tail(data: bytes, offset: int, size: int) -> None:
    parts = [bytes(c) for c in blobs.chunks(data, offset=offset, size=size)]
    assert b"".join(parts) == data[offset:]
    assert all(1 <= len(p) <= size for p in parts)
    assert all(len(p) == size for p in parts[:-1])


def test_digest_is_sha256_hex_of_any_buffer() -> None:
    data = blobs.encode(_model())
    expected = hashlib.sha256(data).hexdigest()
    assert blobs.digest(data) == expected
    assert blobs.digest(bytearray(data)) == expected
    assert blobs.digest(memoryview(data)) == expected
    assert len(expected) == 64 and set(expected) <= set("0123456789abcdef")
    assert blobs.digest(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert blobs.digest(data[:-1] + bytes([data[-1] ^ 1])) != expected


def test_a_labelled_header_keeps_the_tensor_bytes_and_adds_the_metadata() -> None:
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)}
    data = blobs.encode(params)
    stream = io.BytesIO(data)
    header = blobs.labelled_header(stream, {"quorum.round": "4"})
    labelled = header + stream.read()
    assert len(header) % 8 == 0  # the tensors stay 8-byte aligned
    assert blobs.read_metadata(labelled) == {"quorum.round": "4"}
    assert blobs.read_metadata(data) == {}
    # safetensors reads it, and encoding its tensors again gives the unlabelled blob back
    loaded = st_load(labelled)
    assert loaded.keys() == params.keys() and all((loaded[k] == params[k]).all() for k in params)
    assert blobs.encode(blobs.decode(labelled)) == data


@pytest.mark.parametrize("length", [1, 3, 1000])
def test_a_blank_blob_filled_through_its_view_is_the_encoded_tensor(length: int) -> None:
    data, view = blobs.blank("masked", "U32", (length,))
    assert not view.any()
    view[:] = np.arange(length, dtype=np.uint32) * 7
    expected = blobs.encode({"masked": np.arange(length, dtype=np.uint32) * 7})
    assert bytes(data) == expected
    header, layout = blobs.one_tensor_layout("masked", "U32", (length,))
    assert expected.startswith(header) and layout == blobs.read_layout(expected)
