"""Unit tests of quorum.wire.write_behind: blocks cast into slots, then hashed and written by
threads behind the code that makes them."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from quorum.wire import blobs, write_behind
from quorum.wire.write_behind import write_flat

GATE_S = 10.0
"""How long a test's step waits for the event it is ordered after (never reached when it works)."""


def _behind_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("write-behind")]


def test_a_block_may_change_as_soon_as_the_next_is_asked_for() -> None:
    """The blocks come in one reused buffer (as `BlobFile.values` reads them) and the writing
    thread is held until the buffer holds the next block's values: the blob still has each
    block's own values, because each was copied into a slot before the next was asked for."""
    count, size = 12, 1000
    header, layout = blobs.one_tensor_layout("w", "F32", (count * size,))
    buffer = np.empty(size, np.float32)
    overwritten = [threading.Event() for _ in range(count)]

    def blocks() -> Iterator[np.ndarray]:
        for number in range(count):
            buffer[:] = number
            if number:
                overwritten[number - 1].set()  # the previous block's values are gone
            yield buffer
        overwritten[-1].set()

    out = io.BytesIO()
    written = 0

    def held_write(data: blobs.Buffer) -> None:
        nonlocal written
        if written:  # the header (first) is written before any block is made
            assert overwritten[written - 1].wait(GATE_S)
        out.write(data)
        written += 1

    write_flat([held_write], header, layout, blocks())
    expected = np.repeat(np.arange(count, dtype=np.float32), size)
    assert out.getvalue() == header + expected.tobytes()


@pytest.mark.parametrize("slot_bytes", [8, 24, 4096, write_behind.SLOT_BYTES])
def test_steps_see_every_slot_in_order_whatever_the_slot_size(
    monkeypatch: pytest.MonkeyPatch, slot_bytes: int
) -> None:
    """Blocks larger than a slot are split, slots are reused round and round, and each step
    (a hash, a write) gets the bytes in order: the blob and digest are the encoded ones."""
    monkeypatch.setattr(write_behind, "SLOT_BYTES", slot_bytes)
    params = {
        "f": np.linspace(-3, 3, 1001, dtype=np.float32),
        "d": np.linspace(-1, 1, 99, dtype=np.float64),
        "i": np.arange(-40, 40, dtype=np.int64).reshape(8, 10),
        "b": np.arange(7) % 2 == 0,
        "h": np.linspace(0, 1, 5, dtype=np.float16),
    }
    data = blobs.encode(params)
    layout = blobs.read_layout(data)
    flat = blobs.as_flat(data, layout)
    sha, out = hashlib.sha256(), io.BytesIO()
    blocks = [flat[i : i + 333] for i in range(0, flat.shape[0], 333)]
    write_flat([sha.update, out.write], data[: layout.data_offset], layout, blocks)
    assert out.getvalue() == data
    assert sha.hexdigest() == blobs.digest(data)


def test_a_failing_step_stops_the_caller_and_its_threads() -> None:
    """A step's error (a full disk) reaches the caller at its next free slot; when write_flat
    has raised, no thread of it runs any more."""
    header, layout = blobs.one_tensor_layout("w", "F64", (100 * 50,))
    calls = 0

    def failing(data: blobs.Buffer) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("no space left")

    made = 0

    def blocks() -> Iterator[np.ndarray]:
        nonlocal made
        for number in range(100):
            made += 1
            yield np.full(50, number, np.float64)

    with pytest.raises(OSError, match="no space left"):
        write_flat([failing], header, layout, blocks())
    assert not _behind_threads()
    assert made < 100  # it stopped at the error, not after every block
    assert calls <= 3 + write_behind.SLOTS  # at most the slots queued before it was seen


def test_an_error_in_the_blocks_stops_the_threads_before_it_reaches_the_caller() -> None:
    header, layout = blobs.one_tensor_layout("w", "F32", (1000,))

    def blocks() -> Iterator[np.ndarray]:
        yield np.zeros(500, np.float32)
        raise ValueError("the step failed")

    with pytest.raises(ValueError, match="the step failed"):
        write_flat([io.BytesIO().write], header, layout, blocks())
    assert not _behind_threads()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([0.5, -2.0, 1e30], True),
        ([0.5, float("nan"), 1.0], False),
        ([0.5, 1e300, 1.0], False),  # finite in float64, infinite cast to the float32 tensor
    ],
)
def test_write_flat_says_whether_the_values_it_wrote_are_finite(
    values: list[float], finite: bool
) -> None:
    """As cast to each tensor's dtype, as a check of the written blob would find them; an int
    tensor's values are never counted (they are rounded, as `blobs.from_flat` rounds them)."""
    params = {"w": np.zeros(3, np.float32), "n": np.zeros(2, np.int32)}
    data = blobs.encode(params)
    layout = blobs.read_layout(data)
    assert [t.name for t in layout.tensors] == ["w", "n"]  # safetensors' order: F32 first
    out = io.BytesIO()
    got = write_flat([out.write], data[: layout.data_offset], layout, [np.array([*values, 4, 5])])
    assert got is finite
    assert got is blobs.all_finite(out.getvalue(), layout)
