"""quorum.wire.finite_scan: a blob's NaN/Inf check made chunk by chunk as it arrives gives the
verdict of the check over the whole blob, wherever the chunks are cut."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.wire import blobs, finite_scan
from quorum.wire.finite_scan import FiniteScan

_KINDS = [np.float16, np.float32, np.float64, np.int32, np.uint8]


def _scan(data: bytes, cuts: list[int]) -> bool | None:
    scan = FiniteScan(len(data))
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        scan.add(data[start:cut])
        start = cut
    return scan.verdict()


@st.composite
def _blobs(draw: st.DrawFn) -> bytes:
    """A blob of tensors of mixed dtypes and odd lengths, laid out in the order drawn (a site's
    own writer need not sort them as safetensors does: an odd float16 or int8 tensor then puts
    the next float32's values off their 4-byte grid), some with a NaN or an infinity put in, its
    header of any length."""
    header: dict[str, object] = {}
    parts, offset = [], 0
    for number in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(_KINDS))
        values = np.arange(draw(st.integers(0, 40)), dtype=np.float64).astype(kind)
        if values.size and np.issubdtype(kind, np.floating) and draw(st.booleans()):
            values[draw(st.integers(0, values.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
        header[f"t{number}"] = {
            "dtype": blobs.dtype_name(values),
            "shape": [values.size],
            "data_offsets": [offset, offset + values.nbytes],
        }
        parts.append(values.tobytes())
        offset += values.nbytes
    text = json.dumps(header).encode() + b" " * draw(st.integers(0, 9))
    return len(text).to_bytes(8, "little") + text + b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(_blobs(), st.lists(st.integers(0, 10_000), max_size=12))
def test_the_verdict_is_the_whole_blobs_wherever_it_is_cut(data: bytes, cuts: list[int]) -> None:
    assert _scan(data, cuts) is blobs.all_finite(data, blobs.read_layout(data))


def test_a_value_cut_across_three_chunks_is_checked_whole() -> None:
    """A float64 NaN whose 8 bytes arrive in three chunks (1, 3 and 4 bytes)."""
    data = blobs.encode({"a": np.array([1.0, np.nan, 2.0])})
    nan_at = blobs.read_layout(data).data_offset + 8
    assert _scan(data, [nan_at + 1, nan_at + 4]) is False
    finite = blobs.encode({"a": np.array([1.0, 3.0, 2.0])})
    assert _scan(finite, [nan_at + 1, nan_at + 4]) is True


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x05\x00\x00",  # shorter than the header's length
        (2**40).to_bytes(8, "little") + b"{}",  # a header longer than the blob
        (7).to_bytes(8, "little") + b"not json",
    ],
)
def test_a_blob_with_no_readable_header_gets_no_verdict(data: bytes) -> None:
    assert _scan(data, [1, 5, 9]) is None


def test_no_verdict_before_the_whole_blob_arrived() -> None:
    data = blobs.encode({"a": np.ones(100, np.float32)})
    scan = FiniteScan(len(data))
    scan.add(data[:-4])
    assert scan.verdict() is None
    scan.add(data[-4:])
    assert scan.verdict() is True


def test_a_header_longer_than_it_gathers_gets_no_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site may declare a header of up to 100 MB: the scan gathers at most HEAD_BYTES of it,
    and leaves the upload to be checked from its spool."""
    monkeypatch.setattr(finite_scan, "HEAD_BYTES", 64)
    data = blobs.encode({f"tensor_{n}": np.ones(3, np.float32) for n in range(5)})
    assert blobs.read_layout(data).data_offset > 64
    assert _scan(data, [7, 30, 100]) is None
