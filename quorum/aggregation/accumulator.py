"""A streaming, example-weighted sum of site models, folded block by block.

What a round folds is an `Update`: a flat vector (a plain upload's view of its bytes), or any
source of consecutive blocks (`UpdateBlocks`: a compressed upload decoded a block at a time,
`quorum.wire.codecs.DecodedUpdate`), so that no sum needs a float copy of a whole update.
"""

from __future__ import annotations

import concurrent.futures
import math
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from quorum.wire.codecs import FOLD_VALUES

FOLD_BLOCK = FOLD_VALUES
"""A plain vector is folded in the blocks a compressed update is decoded in: one scratch size."""

PAGE_BYTES = mmap.PAGESIZE
PREFAULT_BYTES = 64 * 1024 * 1024


def _cores() -> int:
    """The cores this process may run on: its affinity where the system tells it (a server
    pinned to some cores, a container's cpuset), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


FOLD_THREADS = max(1, min(4, _cores()))
"""Threads a large update is folded on, each over its own slice of the sum: file reads and
numpy's arithmetic let go of the GIL, and a round's last fold is on its critical path while the
sites wait (a 1 GB upload: 0.46 s on one core of this 2-core machine, 0.24 s on two)."""
SLICE_VALUES = 4 * 1024 * 1024
"""The fewest values a slice of a fold holds: smaller updates are folded on the caller's thread,
whose hand-over to another would cost more than it saves."""


class UpdateBlocks(Protocol):
    """A site's model, flat, as consecutive blocks: `blocks()` yields (start, values) covering
    0..numel in order, each values array (any float dtype) valid until the next is asked for.
    It may be iterated more than once (central DP reads an update's norm first)."""

    @property
    def numel(self) -> int: ...

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]: ...


@runtime_checkable
class SlicedBlocks(UpdateBlocks, Protocol):
    """Blocks that can also be read from anywhere: `blocks_between(start, stop)` yields the
    blocks of values [start, stop), so that slices of one update can be folded side by side."""

    def blocks_between(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]: ...


class FlatBlocks:
    """A flat vector as blocks: views, no copies."""

    def __init__(self, vector: np.ndarray, block: int = FOLD_BLOCK) -> None:
        if vector.ndim != 1:
            raise ValueError(f"a flat vector is required, got shape {vector.shape}")
        if not np.issubdtype(vector.dtype, np.floating):
            raise ValueError(f"vector has dtype {vector.dtype}; a float dtype is required")
        self.vector = vector
        self.block = block

    @property
    def numel(self) -> int:
        return int(self.vector.shape[0])

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        return self.blocks_between(0, self.numel)

    def blocks_between(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for first in range(start, stop, self.block):
            yield first, self.vector[first : min(first + self.block, stop)]


Update = np.ndarray | UpdateBlocks


def blocks_of(update: Update, numel: int) -> UpdateBlocks:
    """`update` as blocks, checked to hold `numel` values."""
    if isinstance(update, np.ndarray):
        if update.shape != (numel,):
            raise ValueError(
                f"an update of shape {update.shape} does not fit a sum of shape ({numel},); "
                "flatten the model first"
            )
        return FlatBlocks(update)
    if update.numel != numel:
        raise ValueError(f"an update of {update.numel} values does not fit a sum of {numel}")
    return update


# Its threads start at the first slice handed over: a process that folds nothing has none.
_POOL = concurrent.futures.ThreadPoolExecutor(max(1, FOLD_THREADS - 1), thread_name_prefix="fold")


def by_slices(
    source: UpdateBlocks,
    work: Callable[[Iterator[tuple[int, np.ndarray]], int], None],
) -> None:
    """Calls `work(blocks, index)` on up to FOLD_THREADS consecutive slices of `source` side
    by side, the first on this thread, when the source can be read by slice and its slices
    would hold SLICE_VALUES or more; else once, with all its blocks and index 0. Returns when
    every slice is done, raising the first slice's error: nothing still writes once it
    returns."""
    count = min(FOLD_THREADS, source.numel // SLICE_VALUES)
    if count < 2 or not isinstance(source, SlicedBlocks):
        work(source.blocks(), 0)
        return
    cuts = [source.numel * i // count for i in range(count)] + [source.numel]
    rest: list[concurrent.futures.Future[None]] = []
    try:  # a slice handed over is waited for, even when the next cannot be (no thread left)
        for i in range(1, count):
            rest.append(_POOL.submit(work, source.blocks_between(cuts[i], cuts[i + 1]), i))
        work(source.blocks_between(cuts[0], cuts[1]), 0)
    finally:
        concurrent.futures.wait(rest)
    for future in rest:
        future.result()


def subtract_into(out: np.ndarray, update: UpdateBlocks, reference: np.ndarray) -> None:
    """out = update - reference, block by block, in out's dtype (a robust round's float32 row,
    an async update's float64 delta)."""
    for start, values in update.blocks():
        end = start + values.shape[0]
        np.subtract(
            values, reference[start:end], out=out[start:end], dtype=out.dtype, casting="same_kind"
        )


class Scratch:
    """One block of float64 scratch, reused for every block of every update a sum folds:
    grown only when a source's blocks are larger (a codec decoding in bigger blocks), never
    allocated per block (a fresh MB-sized temporary per block is a fresh mapping)."""

    def __init__(self, size: int = 0) -> None:
        self._buffer = np.empty(size, np.float64)

    @property
    def nbytes(self) -> int:
        return int(self._buffer.nbytes)

    def take(self, size: int) -> np.ndarray:
        """`size` values of scratch, their contents undefined, valid until the next take."""
        if size > self._buffer.shape[0]:
            self._buffer = np.empty(size, np.float64)
        return self._buffer[:size]


class SliceScratch:
    """A `Scratch` for each slice of a fold (`by_slices`), made when its slice first asks."""

    def __init__(self, size: int = 0) -> None:
        self._size = size
        self._each: list[Scratch] = []
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(scratch.nbytes for scratch in self._each)

    def take(self, index: int, size: int) -> np.ndarray:
        """`Scratch.take` of slice `index`'s scratch."""
        with self._lock:
            while len(self._each) <= index:
                self._each.append(Scratch(self._size))
            scratch = self._each[index]
        return scratch.take(size)


def check_weight(weight: float) -> float:
    weight = float(weight)
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"weight must be a positive finite number, got {weight}")
    return weight


class UpdateSum(Protocol):
    """Where a round folds each site's validated model as it arrives: the plain weighted sum
    below, central DP's clipped sum (`quorum.privacy.dp.central.ClippedSum`), the robust rules'
    (`quorum.aggregation.robust`), an async run's buffer."""

    @property
    def count(self) -> int: ...

    def fold(self, update: Update, weight: float, /) -> None: ...


class Prefault:
    """Faults in a large array's pages in a thread of its own, one write per page, so that
    whoever writes it first later does not wait for the kernel; `wait` returns once done.
    Arrays under PREFAULT_BYTES are left as they are (a thread would cost more). The thread
    holds the array only a slice at a time: an array dropped meanwhile (a round aborted before
    its first fold) is freed, and the thread stops."""

    def __init__(self, array: np.ndarray) -> None:
        self._thread: threading.Thread | None = None
        if array.nbytes >= PREFAULT_BYTES:
            self._thread = threading.Thread(
                target=_touch, args=(weakref.ref(array),), name="quorum-prefault", daemon=True
            )
            self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _touch(held: weakref.ref[np.ndarray]) -> None:
    start = 0
    while True:
        array = held()
        if array is None:
            return
        flat = array.reshape(-1).view(np.uint8)
        if start >= flat.shape[0]:
            return
        # One byte per page; numpy lets go of the GIL meanwhile.
        flat[start : start + PREFAULT_BYTES : PAGE_BYTES] = 0
        start += PREFAULT_BYTES
        del array, flat


class Accumulator:
    """Streaming example-weighted sum: memory is O(numel) whatever the number of sites.

    One float64 buffer of `numel` values (the running sum) and one block of float64 scratch
    per slice of a fold (a large update is folded in FOLD_THREADS slices side by side):
    folding an update of any float dtype, whole or in blocks, creates no other temporary, so the
    server holds one model's worth of float64 state however many sites report.

    The first fold writes the sum rather than adding to zeros: the vector is allocated
    uninitialised (`np.empty`) and no pass reads zeros back. Two folds of 50M values took
    0.8-1.3 CPU seconds into `np.zeros`, 0.2-0.4 s so.

    A large sum's memory is faulted in by a thread as soon as the sum is made (`Prefault`):
    a round's sum is made when its tasks are offered, and its pages come in while the sites
    download and train rather than during the first fold, which waits for them. On this VM a
    fresh page costs its zeroing by the kernel and the host's own fault: the first fold of a
    1 GB model took 4.6-6.3 s into a fresh 2 GB sum, 0.5 s into touched memory (perf: 61% of
    it in the kernel's clear_page).
    """

    def __init__(self, numel: int, vector: np.ndarray | None = None) -> None:
        """`vector`: float64, `numel` values, to make the sum in (its values are not read): a
        run's sums, one round after the other, in one vector whose pages are faulted in once."""
        if numel < 0:
            raise ValueError(f"numel must be non-negative, got {numel}")
        self._numel = int(numel)
        if vector is None:
            vector = np.empty(self._numel, dtype=np.float64)
        elif vector.shape != (self._numel,) or vector.dtype != np.float64:
            raise ValueError(f"a sum of {numel} values needs a float64 vector of that many")
        self._sum: npt.NDArray[np.float64] = vector
        self._prefault = Prefault(self._sum)
        self._scratch = SliceScratch(min(self._numel, FOLD_BLOCK))
        self._count = 0
        self._total_weight = 0.0

    @property
    def numel(self) -> int:
        return self._numel

    @property
    def count(self) -> int:
        """How many updates were folded."""
        return self._count

    @property
    def total_weight(self) -> float:
        """The sum of the weights folded so far."""
        return self._total_weight

    def fold(self, update: Update, weight: float, /) -> None:
        """Adds `weight * update` to the sum, block by block, in float64."""
        source = blocks_of(update, self._numel)
        weight = check_weight(weight)
        self._prefault.wait()
        first = self._count == 0

        def fold(blocks: Iterator[tuple[int, np.ndarray]], index: int) -> None:
            for start, values in blocks:
                target = self._sum[start : start + values.shape[0]]
                if first:
                    np.multiply(values, weight, out=target, dtype=np.float64)
                    continue
                scratch = self._scratch.take(index, values.shape[0])
                np.multiply(values, weight, out=scratch, dtype=np.float64)
                np.add(target, scratch, out=target)

        by_slices(source, fold)
        self._count += 1
        self._total_weight += weight

    def mean(self) -> np.ndarray:
        """The weighted mean of the folded updates, as a new float64 array."""
        return self.mean_part(0, self._numel)

    def mean_part(self, start: int, stop: int) -> np.ndarray:
        """Values [start, stop) of `mean()`, as a new float64 array: the server steps a large
        model block by block, and a whole float64 mean beside the sum would double its
        largest buffer."""
        if self._count == 0:
            raise ValueError("nothing was folded: the mean of no updates is undefined")
        return np.divide(self._sum[start:stop], self._total_weight)
