"""Update codecs: how a site's update travels compressed, and how the server reads it back.

A site encodes its update as the difference from the global model it was sent (a delta: small
values, so that float16 and int8 keep their precision where it matters) and uploads the encoded
tensors as an ordinary safetensors blob, flat, whatever the model's tensors:

    fp16  delta F16[P]                          2 bytes a value
    bf16  delta I16[P]  (bfloat16's raw bits)   2 bytes a value, float32's range
    int8  delta I8[P], scales F32[ceil(P/B)]    1 byte a value + one float per block of B
    topk  mask U8[ceil(P/8)], values F16[k]     the k largest deltas by magnitude, their
                                                positions as a bitmap (1 bit a value)

Top-k is meant with error feedback: what a site leaves out (and float16's rounding of what it
keeps) is added to its next update (`quorum.client.compression`). Its positions travel as a
bitmap rather than as indices: for the usual fractions (k/P above 1/32) the bitmap is smaller
than 32-bit indices, and it is valid by construction (in range, increasing, no duplicates);
what is checked is that it marks exactly k values.

The server never makes a float copy of a whole update: `DecodedUpdate` yields the site's model
(reference + delta) block by block into one scratch block, which the round's sum folds as it
goes (`quorum.aggregation.accumulator`). Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field, model_validator

from quorum.errors import TaskError, UploadRejected
from quorum.wire.blobs import Params

CodecName = Literal["none", "fp16", "bf16", "int8", "topk"]
CODEC_NAMES: tuple[CodecName, ...] = ("none", "fp16", "bf16", "int8", "topk")
DEFAULT_INT8_BLOCK = 256
"""Values per int8 scale: 4 bytes of scale per 256 values cost 1.6% of the int8 payload."""
FOLD_VALUES = 1 << 16
"""Values per block the server decodes and folds at a time (a multiple of 8 and of the int8
block): 512 KiB of float64 scratch."""
FLOAT16_MAX = float(np.finfo(np.float16).max)
MAX_INT8_SCALE = float(np.finfo(np.float32).max) / 128
"""Above it, a scale times 127 might round to infinity in float32."""

TensorLayout = dict[str, tuple[str, tuple[int, ...]]]
"""Tensor name -> (safetensors dtype, shape), as `blobs.Layout.describe` gives it."""


class Codec(Protocol):
    """One way of carrying a flat delta of P values."""

    @property
    def name(self) -> CodecName: ...

    @property
    def error_feedback(self) -> bool:
        """Whether the site keeps what the encoding lost and adds it to its next update."""
        ...

    @property
    def fold_block(self) -> int:
        """Values per decoded block."""
        ...

    def layout(self, numel: int) -> TensorLayout:
        """The tensors an encoded delta of `numel` values must have, exactly."""
        ...

    def encode(self, delta: np.ndarray) -> Params:
        """The tensors carrying `delta` (flat, finite, any float dtype)."""
        ...

    def check(self, tensors: Params, numel: int) -> None:
        """Raises UploadRejected naming the first problem of tensors of the right layout."""
        ...

    def blocks(self, tensors: Params, numel: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, delta[start:start+n]) for consecutive blocks covering all `numel` values;
        each block is a float array valid until the next one is asked for."""
        ...


def _chunks(values: np.ndarray, size: int = FOLD_VALUES) -> Iterator[tuple[int, np.ndarray]]:
    """(start, values[start:start+size]): an encoder's working set stays a chunk's, not a
    model's (a large model's float temporaries would each cost a fresh allocation)."""
    for start in range(0, values.shape[0], size):
        yield start, values[start : start + size]


def _refuse_non_finite(values: np.ndarray, what: str, finite: Callable[[np.ndarray], bool]) -> None:
    for _, piece in _chunks(values):
        if not finite(piece):
            raise UploadRejected("non_finite", f"{what} holds NaN or infinite values")


def _all_finite(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all())


@dataclass(frozen=True)
class Float16:
    """IEEE half precision: 11 significant bits, values up to 65504."""

    name: CodecName = "fp16"
    error_feedback: bool = False
    fold_block: int = FOLD_VALUES

    def layout(self, numel: int) -> TensorLayout:
        return {"delta": ("F16", (numel,))}

    def encode(self, delta: np.ndarray) -> Params:
        out = np.empty(delta.shape[0], np.float16)
        for start, piece in _chunks(delta):
            largest = float(np.max(np.abs(piece)))
            if largest > FLOAT16_MAX:
                raise TaskError(
                    f"the update changes a value by {largest:.3g}, beyond float16's range "
                    f"(±{FLOAT16_MAX:g}): use bf16 or int8 for this run"
                )
            out[start : start + piece.shape[0]] = piece
        return {"delta": out}

    def check(self, tensors: Params, numel: int) -> None:
        _refuse_non_finite(tensors["delta"], "the float16 delta", _all_finite)

    def blocks(self, tensors: Params, numel: int) -> Iterator[tuple[int, np.ndarray]]:
        out = np.empty(min(self.fold_block, numel), np.float32)
        for start, piece in _chunks(tensors["delta"], self.fold_block):
            view = out[: piece.shape[0]]
            view[...] = piece
            yield start, view


_BF16_EXPONENT = 0x7F80


@dataclass(frozen=True)
class BFloat16:
    """bfloat16, carried as raw bits (numpy has no bfloat16 dtype): float32's 8 exponent bits
    and range, 8 significant bits. Encoding rounds to nearest even; decoding shifts the bits
    back into the top half of a float32."""

    name: CodecName = "bf16"
    error_feedback: bool = False
    fold_block: int = FOLD_VALUES

    def layout(self, numel: int) -> TensorLayout:
        return {"delta": ("I16", (numel,))}

    def encode(self, delta: np.ndarray) -> Params:
        out = np.empty(delta.shape[0], np.uint16)
        for start, piece in _chunks(delta):
            bits = np.ascontiguousarray(piece, dtype=np.float32).view(np.uint32)
            high = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
            if np.any((high & _BF16_EXPONENT) == _BF16_EXPONENT):
                raise TaskError(
                    "the update has values that are not finite or beyond bfloat16's range "
                    "(float32's)"
                )
            out[start : start + piece.shape[0]] = high
        return {"delta": out.view(np.int16)}

    def check(self, tensors: Params, numel: int) -> None:
        _refuse_non_finite(
            tensors["delta"],
            "the bfloat16 delta",
            lambda bits: not np.any((bits.view(np.uint16) & _BF16_EXPONENT) == _BF16_EXPONENT),
        )

    def blocks(self, tensors: Params, numel: int) -> Iterator[tuple[int, np.ndarray]]:
        wide = np.empty(min(self.fold_block, numel), np.uint32)
        for start, piece in _chunks(tensors["delta"], self.fold_block):
            view = wide[: piece.shape[0]]
            np.left_shift(piece.view(np.uint16), 16, out=view, dtype=np.uint32)
            yield start, view.view(np.float32)


@dataclass(frozen=True)
class Int8:
    """Blockwise absmax int8: each block of `block` values has one float32 scale, the block's
    largest magnitude / 127, and each value is rounded to the nearest multiple of it (error at
    most half a scale)."""

    block: int = DEFAULT_INT8_BLOCK
    name: CodecName = "int8"
    error_feedback: bool = False

    @property
    def fold_block(self) -> int:
        return self.block * max(1, FOLD_VALUES // self.block)

    def layout(self, numel: int) -> TensorLayout:
        return {"delta": ("I8", (numel,)), "scales": ("F32", (-(-numel // self.block),))}

    def encode(self, delta: np.ndarray) -> Params:
        numel = delta.shape[0]
        out = np.empty(numel, np.int8)
        scales = np.empty(-(-numel // self.block), np.float32)
        # One chunk of whole blocks at a time, in float32, in one scratch buffer.
        work = np.empty(min(self.fold_block, scales.shape[0] * self.block), np.float32)
        for start, piece in _chunks(delta, self.fold_block):
            n = piece.shape[0]
            chunk = work[: -(-n // self.block) * self.block]
            chunk[:n] = piece
            chunk[n:] = 0
            rows = chunk.reshape(-1, self.block)
            first = start // self.block
            block_scales = scales[first : first + rows.shape[0]]
            np.max(np.abs(rows), axis=1, out=block_scales)
            block_scales /= np.float32(127)
            # Divided, not multiplied by 1/scale, which overflows for subnormal scales.
            np.divide(
                rows, np.where(block_scales > 0, block_scales, np.float32(1))[:, None], out=rows
            )
            np.rint(rows, out=rows)
            np.clip(rows, -127, 127, out=rows)
            out[start : start + n] = chunk[:n]
        return {"delta": out, "scales": scales}

    def check(self, tensors: Params, numel: int) -> None:
        scales = tensors["scales"]
        _refuse_non_finite(scales, "the int8 scales", _all_finite)
        if scales.size and float(scales.min()) < 0:
            raise UploadRejected("bad_encoding", "an int8 scale is negative")
        if scales.size and float(scales.max()) > MAX_INT8_SCALE:
            # 127 times it would not be a finite float32 (an honest scale is at most 3.4e38/127)
            raise UploadRejected(
                "bad_encoding",
                f"an int8 scale is {float(scales.max()):.3g}, over {MAX_INT8_SCALE:.3g}",
            )
        for _, piece in _chunks(tensors["delta"]):
            if piece.size and int(piece.min()) < -127:
                raise UploadRejected(
                    "bad_encoding", "an int8 value is -128; values are in -127..127"
                )

    def blocks(self, tensors: Params, numel: int) -> Iterator[tuple[int, np.ndarray]]:
        step = self.fold_block
        out = np.empty(min(step, numel), np.float32)
        scales = tensors["scales"]
        for start, piece in _chunks(tensors["delta"], step):
            n = piece.shape[0]
            first = start // self.block
            per_value = np.repeat(scales[first : first + -(-n // self.block)], self.block)[:n]
            np.multiply(piece, per_value, out=out[:n], dtype=np.float32)
            yield start, out[:n]


@dataclass(frozen=True)
class TopK:
    """The ceil(fraction·P) deltas of largest magnitude, as float16 (clamped to its range: the
    error feedback carries the rest), their positions as a little-endian bitmap."""

    fraction: float
    name: CodecName = "topk"
    error_feedback: bool = True
    fold_block: int = FOLD_VALUES

    def kept(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.fraction * numel))) if numel else 0

    def layout(self, numel: int) -> TensorLayout:
        return {"mask": ("U8", (-(-numel // 8),)), "values": ("F16", (self.kept(numel),))}

    def encode(self, delta: np.ndarray) -> Params:
        numel = delta.shape[0]
        k = self.kept(numel)
        magnitude = np.abs(delta)
        if 0 < k < numel:
            # The k-th largest magnitude by a partition of the values (no index array of P
            # int64s, as an argpartition would make); ties at it are taken first come.
            threshold = np.partition(magnitude, numel - k)[numel - k]
            mask = magnitude > threshold
            ties = np.flatnonzero(magnitude == threshold)[: k - int(np.count_nonzero(mask))]
            mask[ties] = True
        else:
            mask = np.full(numel, k == numel)
        values = np.clip(delta[mask], -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        return {"mask": np.packbits(mask, bitorder="little"), "values": values}

    def check(self, tensors: Params, numel: int) -> None:
        mask, values = tensors["mask"], tensors["values"]
        _refuse_non_finite(values, "the top-k values", _all_finite)
        marked = sum(int(np.bitwise_count(p).sum()) for _, p in _chunks(mask))
        if marked != values.shape[0]:
            raise UploadRejected(
                "bad_encoding",
                f"the top-k bitmap marks {marked} positions for {values.shape[0]} values",
            )
        if numel % 8 and int(mask[-1]) >> (numel % 8):
            raise UploadRejected(
                "bad_encoding", f"the top-k bitmap marks positions beyond the model's {numel}"
            )

    def blocks(self, tensors: Params, numel: int) -> Iterator[tuple[int, np.ndarray]]:
        mask, values = tensors["mask"], tensors["values"]
        out = np.empty(min(self.fold_block, numel), np.float32)
        used = 0
        for start in range(0, numel, self.fold_block):
            n = min(self.fold_block, numel - start)
            bits = np.unpackbits(
                mask[start // 8 : (start + n + 7) // 8], count=n, bitorder="little"
            ).view(np.bool_)
            view = out[:n]
            view[...] = 0
            count = int(np.count_nonzero(bits))
            view[bits] = values[used : used + count]
            used += count
            yield start, view


class CompressionConfig(BaseModel):
    """How the sites' updates travel (issue 15): each site sends its update relative to the
    model it was sent, encoded. Downloads of the global model are not compressed."""

    upload: CodecName = Field(
        "none",
        description="none: the trained model as is; fp16, bf16: half-precision deltas (2x "
        "smaller); int8: blockwise 8-bit deltas, one float scale per `block` values (about 4x); "
        "topk: the `fraction` largest deltas, with error feedback at each site",
    )
    fraction: float = Field(0.1, gt=0, le=1, description="topk: the fraction of values sent")
    block: int = Field(DEFAULT_INT8_BLOCK, ge=8, le=65536, description="int8: values per scale")

    @model_validator(mode="after")
    def _check_block(self) -> CompressionConfig:
        if self.block & (self.block - 1):
            raise ValueError(f"compression.block must be a power of two, got {self.block}")
        return self


def make_codec(settings: CompressionConfig) -> Codec | None:
    """The codec of a run's settings; None for "none" (the trained model travels as it is)."""
    name = settings.upload
    if name == "none":
        return None
    if name == "fp16":
        return Float16()
    if name == "bf16":
        return BFloat16()
    if name == "int8":
        return Int8(settings.block)
    if name == "topk":
        return TopK(settings.fraction)
    raise ValueError(f"no codec {name!r}; codecs: {', '.join(CODEC_NAMES[1:])}")


def decode(codec: Codec, tensors: Params, numel: int) -> np.ndarray:
    """The whole delta (the site's view of what the server will read); float32 holds every
    codec's values exactly."""
    out = np.empty(numel, np.float32)
    for start, values in codec.blocks(tensors, numel):
        out[start : start + values.shape[0]] = values
    return out


class DecodedUpdate:
    """A site's model as the server folds it, block by block: `reference` (the model the site
    trained from) plus the decoded delta, in one float64 block reused for every block."""

    def __init__(self, codec: Codec, tensors: Params, reference: np.ndarray) -> None:
        self.codec = codec
        self.tensors = tensors
        self.reference = reference

    @property
    def numel(self) -> int:
        return int(self.reference.shape[0])

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        out = np.empty(min(self.codec.fold_block, self.numel), np.float64)
        for start, delta in self.codec.blocks(self.tensors, self.numel):
            view = out[: delta.shape[0]]
            np.add(
                self.reference[start : start + delta.shape[0]], delta, out=view, dtype=np.float64
            )
            yield start, view
