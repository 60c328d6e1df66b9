"""Blocks of values cast, hashed and written by threads behind the code that computes them.

The server's step makes a large model's new values a block at a time and writes them to the
round's checkpoint, whose writer hashes them on the way (`BlobWriter`). numpy's arithmetic,
hashlib and file writes all let go of the GIL on large buffers, so one block can be hashed on
one thread and written on another while the caller computes the next.

Each block is cast (to its tensor's dtype) into one of a few slots owned here before the
threads see it: whatever buffer the caller's block lies in (a file's reused read buffer, a view
of the round's sum, a strategy's own result) may change as soon as `write` returns, and no block
takes fresh memory of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import numpy as np

from quorum.wire import blobs
from quorum.wire.blobfiles import VALUE_BYTES

Step = Callable[[blobs.Buffer], object]
"""Something done to every buffer, in order: a hash's update, a file's write."""

SLOT_BYTES = VALUE_BYTES
"""Bytes of a slot: a block of `BlobFile.values` fits one; a larger block is written a slot at
a time."""
SLOTS = 4
"""Slots filled or in flight at once, so that neither side waits on the other's unevenness.
Ten warm steps of a 1 GB model, median: 1.48 s with 2 slots, 1.32 s with 4, 1.29 s with 8."""


class WriteBehind:
    """Gives every buffer to each of `steps` in a thread of its own, in order, from slots the
    caller fills. Use as a context manager: leaving it waits for every step and raises the
    first error one of them raised; leaving it on an error drops what had not begun (the caller
    then discards what was written)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self._steps = [(ThreadPoolExecutor(1, thread_name_prefix="write-behind"), s) for s in steps]
        self._slots = [np.empty(SLOT_BYTES, np.uint8) for _ in range(SLOTS)]
        self._pending: list[list[Future[object]]] = [[] for _ in range(SLOTS)]
        self._turn = 0
        self.finite = True
        """No NaN or infinity in a float block written so far, as cast: a float64 value that
        fits no float32 is infinite there. Checked in the slot, still in the CPU's cache, where
        a check of the written file would read it all back."""

    def write(self, values: np.ndarray, dtype: np.dtype) -> None:
        """Queues `values` cast to `dtype` (as `astype` casts); `values` may change once this
        returns."""
        per_slot = SLOT_BYTES // dtype.itemsize
        for first in range(0, values.shape[0], per_slot):
            part = values[first : first + per_slot]
            self._wait(self._turn)  # a step's error stops the caller here
            slot = self._slots[self._turn][: part.shape[0] * dtype.itemsize].view(dtype)
            np.copyto(slot, part, casting="unsafe")
            if self.finite and dtype.kind == "f":
                self.finite = bool(np.isfinite(slot).all())
            data = blobs.raw(slot)
            self._pending[self._turn] = [thread.submit(step, data) for thread, step in self._steps]
            self._turn = (self._turn + 1) % SLOTS

    def _wait(self, turn: int) -> None:
        pending, self._pending[turn] = self._pending[turn], []
        for done in pending:
            done.result()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # No step may still run once this returns: the caller closes or removes the file.
        for thread, _ in self._steps:
            thread.shutdown(wait=True, cancel_futures=exc is not None)
        if exc is None:
            for turn in range(SLOTS):
                self._wait((self._turn + turn) % SLOTS)


def write_flat(
    steps: Sequence[Step], header: bytes, layout: blobs.Layout, blocks: Iterable[np.ndarray]
) -> bool:
    """Gives `steps` (a `BlobWriter`'s) a blob of `layout`, whose `header` it starts with, from
    consecutive blocks of flat values, each cast to its tensor's dtype as `blobs.from_flat`
    casts, behind the code that makes the blocks: a block may change once the next is asked
    for. Returns whether the blob's float values are all finite."""
    for step in steps:
        step(header)
    with WriteBehind(steps) as behind:
        for piece, dtype in blobs.flat_pieces(layout, blocks):
            behind.write(piece, dtype)
    return behind.finite
