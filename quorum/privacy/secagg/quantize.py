"""Fixed-point encoding of model deltas for summation modulo 2^32.

Masking works in the ring of integers mod 2^32, so updates are clipped to [-clip, clip] and
mapped to signed integers in [-levels, levels] (two's complement in the ring), zero exactly at
zero. Rounding is stochastic (floor(x + U), U uniform in [0, 1)), so the encoding is unbiased:
a value far below one step still arrives on average, where rounding to nearest would drop it or,
with an offset grid, bias every element of every site the same way. The number of sites is
bounded (`max_sites`) so that the true sum never leaves the int32 range: the server's sum mod
2^32, read as int32, is then the exact sum.

The example weight rides as the last element of the vector and each delta is pre-scaled by its
weight, so the server learns the weighted sum and the total weight, and never one site's count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from quorum.errors import SecAggError

_RING = 2**32
_INT32_MAX = 2**31 - 1


def levels(bits: int) -> int:
    """The largest magnitude of a quantised element: 2^(bits-1) - 1 (bits include the sign)."""
    if not 2 <= bits <= 31:
        raise SecAggError(f"quantisation bits must be 2..31, got {bits}")
    return (1 << (bits - 1)) - 1


def max_sites(bits: int) -> int:
    """The most vectors whose sum cannot leave the int32 range (and so cannot wrap)."""
    return _INT32_MAX // levels(bits)


def _check_clip(clip: float) -> None:
    if not (math.isfinite(clip) and clip > 0):
        raise SecAggError(f"the clipping bound must be a positive finite number, got {clip}")


def quantize(
    values: npt.NDArray[np.floating],
    clip: float,
    bits: int,
    rng: np.random.Generator | None = None,
) -> npt.NDArray[np.uint32]:
    out = np.zeros(np.shape(values), dtype=np.uint32)
    _quantize_into([np.asarray(values).reshape(-1)], 1.0, clip, bits, out.reshape(-1), rng)
    return out


QUANTIZE_BLOCK = 1 << 20
"""Values quantised at a time: the float64 steps and the uniform draws are one block's, not a
temporary of the update's size (three times a float32 model) on every site each round."""


def _quantize_into(
    parts: Iterable[npt.NDArray[np.floating]],
    factor: float,
    clip: float,
    bits: int,
    out: npt.NDArray[np.uint32],
    rng: np.random.Generator | None,
) -> int:
    """Adds the quantised `factor * values` into `out` (modulo 2^32), where `parts` are the
    values' consecutive 1-D pieces, of any lengths, filling `out` exactly; returns how many
    elements were clipped. Into zeros that is the quantised vector; into a site's mask, the
    masked vector, without a vector of either beside it.

    A handful of passes over each block, in place; the uniform draws come in the order a
    whole-vector draw would give them, so the result does not depend on how `parts` is cut."""
    top = levels(bits)
    _check_clip(clip)
    generator = rng or np.random.default_rng()
    # One block's scratch for the whole vector: no fresh temporaries (each a new mapping of the
    # process's heap, quorum.heap) for every block.
    room = min(QUANTIZE_BLOCK, out.shape[0])
    steps, draws, whole = np.empty(room), np.empty(room, np.float32), np.empty(room, np.int32)
    clipped, start = 0, 0
    for part in parts:
        for offset in range(0, part.shape[0], QUANTIZE_BLOCK):
            block = part[offset : offset + QUANTIZE_BLOCK]
            target = out[start : start + block.shape[0]]
            if target.shape != block.shape:
                raise SecAggError(f"the values overrun the {out.shape[0]} of the vector")
            scaled = steps[: block.shape[0]]
            np.multiply(block, factor * top / clip, out=scaled, dtype=np.float64)  # in steps
            highest, lowest = float(scaled.max()), float(scaled.min())
            if math.isnan(highest) or math.isnan(lowest):
                raise SecAggError("cannot quantise an update that contains NaN")
            if highest > top or lowest < -top:  # only then walk the block to count and clip
                clipped += int(np.count_nonzero(scaled > top))
                clipped += int(np.count_nonzero(scaled < -top))
                np.clip(scaled, -top, top, out=scaled)
            scaled += generator.random(dtype=np.float32, out=draws[: scaled.shape[0]])
            np.floor(scaled, out=scaled)  # U < 1: the result stays within [-top, top]
            steps_int = whole[: scaled.shape[0]]
            np.copyto(steps_int, scaled, casting="unsafe")
            # Two's complement: adding the int32's bits is adding it modulo 2^32.
            np.add(target, steps_int.view(np.uint32), out=target)
            start += scaled.shape[0]
    if start != out.shape[0]:
        raise SecAggError(f"{start} values do not fill the vector of {out.shape[0]}")
    return clipped


def _check_count(count: int, bits: int) -> None:
    limit = max_sites(bits)
    if not 1 <= count <= limit:
        raise SecAggError(
            f"a sum of {count} vectors cannot be decoded at {bits} bits: expected 1..{limit} "
            "(more would wrap modulo 2^32)"
        )


def dequantize_sum(
    total: npt.NDArray[np.uint32], count: int, clip: float, bits: int
) -> npt.NDArray[np.float64]:
    """The sum of `count` clipped vectors, from the sum of their quantised forms."""
    _check_count(count, bits)
    _check_clip(clip)
    return _dequantize(np.asarray(total, dtype=np.uint32), clip / levels(bits))


def _dequantize(total: npt.NDArray[np.uint32], step: float) -> npt.NDArray[np.float64]:
    """The int32 reading of `total` in units of `step`, as a new float64 array."""
    out = total.view(np.int32).astype(np.float64)
    out *= step
    return out


def _check_max_weight(max_weight: int) -> None:
    if not 1 <= max_weight < _RING:
        raise SecAggError(f"max_weight must be 1..2^32-1, got {max_weight}")


def encode_update(
    delta: npt.NDArray[np.floating],
    num_examples: int,
    clip: float,
    bits: int,
    max_weight: int,
    rng: np.random.Generator | None = None,
) -> tuple[npt.NDArray[np.uint32], int, int]:
    """The vector a site masks: its weighted, quantised delta followed by its weight; with the
    weight and the number of elements that were clipped.

    The weight is capped at `max_weight`, so no site can dominate the mean by claiming a huge
    example count, and the scaled delta stays within the clipping range.
    """
    delta = np.asarray(delta)
    if delta.ndim != 1:
        raise SecAggError(f"the delta must be a flat 1-D vector, got shape {delta.shape}")
    vector = np.zeros(delta.shape[0] + 1, dtype=np.uint32)
    weight, clipped = add_encoded_update(vector, [delta], num_examples, clip, bits, max_weight, rng)
    return vector, weight, clipped


def add_encoded_update(
    out: npt.NDArray[np.uint32],
    parts: Iterable[npt.NDArray[np.floating]],
    num_examples: int,
    clip: float,
    bits: int,
    max_weight: int,
    rng: np.random.Generator | None = None,
) -> tuple[int, int]:
    """Adds `encode_update`'s vector into `out` (modulo 2^32) from the delta's consecutive
    1-D `parts`: a site adds it into its mask a block at a time, so neither its delta nor its
    quantised vector is ever whole. Returns the weight and the number of elements clipped."""
    if num_examples < 1:
        raise SecAggError(f"num_examples must be at least 1, got {num_examples}")
    _check_max_weight(max_weight)
    if out.dtype != np.uint32 or out.ndim != 1 or out.shape[0] < 1:
        raise SecAggError("the encoded update goes into a non-empty 1-D uint32 vector")
    weight = min(num_examples, max_weight)
    clipped = _quantize_into(parts, weight / max_weight, clip, bits, out[:-1], rng)
    np.add(out[-1:], np.uint32(weight), out=out[-1:])  # modulo 2^32, as the rest
    return weight, clipped


DECODE_BLOCK = QUANTIZE_BLOCK
"""Values decoded at a time by `DecodedSum.blocks`."""


class DecodedSum:
    """The example-weighted mean delta of `count` sites (`mean_part`) and their total weight,
    read from the sum of their encoded vectors (`add_encoded_update`) a block at a time.

    The server's step takes the mean block by block as it writes the new model: a whole float64
    mean would be twice a float32 model beside the uint32 sum. Each block is bit for bit that
    block of the whole-vector decode (the same two products, in the same order, per element).
    `numel` and `blocks()` make it an update an async buffer folds
    (`quorum.aggregation.UpdateBlocks`)."""

    def __init__(
        self, total: npt.NDArray[np.uint32], count: int, clip: float, bits: int, max_weight: int
    ) -> None:
        _check_max_weight(max_weight)
        _check_count(count, bits)
        _check_clip(clip)
        if count * max_weight >= _RING:
            raise SecAggError(
                f"a sum of {count} weights up to {max_weight} may have wrapped modulo 2^32: "
                "lower max_weight"
            )
        total = np.asarray(total, dtype=np.uint32)
        if total.ndim != 1 or total.shape[0] < 1:
            raise SecAggError(f"the sum must be a non-empty 1-D vector, got shape {total.shape}")
        weight = int(total[-1])
        if not count <= weight <= count * max_weight:
            # Every site's weight is 1..max_weight: a total outside that range was forged (or
            # wrapped) by some site, and dividing by it would scale the mean arbitrarily.
            raise SecAggError(
                f"the summed weight {weight} is outside {count}..{count * max_weight}, the "
                f"range of {count} sites' weights"
            )
        self.weight = weight
        self._values = total[:-1]
        self._step = clip / levels(bits)
        self._scale = max_weight / weight

    @property
    def numel(self) -> int:
        return int(self._values.shape[0])

    def mean_part(self, start: int, stop: int) -> npt.NDArray[np.float64]:
        """Values [start, stop) of the mean delta, as a new float64 array."""
        out = _dequantize(self._values[start:stop], self._step)
        out *= self._scale
        return out

    def blocks(self) -> Iterator[tuple[int, npt.NDArray[np.float64]]]:
        for start in range(0, self.numel, DECODE_BLOCK):
            yield start, self.mean_part(start, start + DECODE_BLOCK)


def error_bound(clip: float, bits: int, count: int) -> float:
    """Worst-case absolute error per element of `dequantize_sum` over `count` vectors."""
    return count * clip / levels(bits)
