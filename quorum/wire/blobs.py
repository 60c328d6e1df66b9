"""Models and updates as safetensors blobs, addressed by the SHA-256 of their bytes.

A blob is the safetensors format: an 8-byte little-endian header length, a JSON header naming
each tensor's dtype, shape and byte range, then the raw little-endian buffers back to back. The
header is parsed and checked here (never executed), and tensors are numpy views over the
received bytes, so decoding copies nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import numpy as np

from quorum.errors import BlobError
from quorum.wire import digests

Params = dict[str, np.ndarray]
"""A model's tensors by name, in a stable order."""

Buffer = bytes | bytearray | memoryview

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U32": np.dtype("<u4"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16"})
MAX_HEADER_BYTES = 100 * 1024 * 1024
CHUNK_BYTES = 2 * 1024 * 1024
"""Bytes of a transfer's message. Each message costs the server and the site a fixed share of
work (gRPC's framing, the event loop, a hand-over to the worker thread that hashes and writes
it): a P = 250M sync round took 7.3-7.8 s in 1 MiB chunks and 6.7-7.1 s in 2 MiB ones, and
11 % less CPU. 4 MiB took 9.9-10.0 s: a chunk must stay under `quorum.heap.MMAP_THRESHOLD`, or
each is a mapping of its own, faulted in afresh (tests/unit/test_heap.py)."""
MAX_DIMS = 32
FINITE_BLOCK = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """Where each tensor lies in a blob. Two blobs with equal layouts can be folded flat."""

    tensors: tuple[TensorSpec, ...]
    data_offset: int

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def size(self) -> int:
        return self.data_offset + (self.tensors[-1].end if self.tensors else 0)

    def describe(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {t.name: (t.dtype, t.shape) for t in self.tensors}


def digest(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


_FILE_ORDER = ("I64", "F64", "F32", "U32", "I32", "F16", "I16", "I8", "U8", "BOOL")
"""safetensors' order of tensors in a file: by dtype (its Dtype enum, descending), then name."""


class Writable(Protocol):
    def write(self, data: Buffer, /) -> object: ...


def dtype_name(array: np.ndarray) -> str:
    """The safetensors name of an array's dtype; raises BlobError for one it cannot hold."""
    for name, dtype in _DTYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            return name
    raise BlobError(f"unsupported dtype {array.dtype}")


def pieces(params: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> Pieces:
    """The safetensors blob of `params` as its header and its tensors' own bytes, in file order
    (copies only of arrays that are not little-endian and C-contiguous): the bytes, byte for
    byte, that `safetensors.numpy.save` writes, without a second copy of the model."""
    arrays: list[tuple[str, str, np.ndarray]] = []
    for name, value in params.items():
        try:
            kind = dtype_name(value)
        except BlobError:
            raise BlobError(f"tensor {name!r} has unsupported dtype {value.dtype}") from None
        # np.ascontiguousarray would turn 0-d tensors into 1-d ones; np.require keeps the shape.
        arrays.append((name, kind, np.require(value, _DTYPES[kind], requirements="C")))
    arrays.sort(key=lambda entry: (_FILE_ORDER.index(entry[1]), entry[0]))
    header = _header([(name, kind, value.shape) for name, kind, value in arrays], metadata)
    return Pieces(header, *(raw(value) for _, _, value in arrays))


class Pieces:
    """A blob as the buffers it is made of, back to back, never joined into one: a site's upload
    is hashed and sent a chunk at a time from its header and its trained tensors' own memory,
    where joining them would hold the model once more. The buffers must not change meanwhile
    (the digest sent ahead of the bytes would no longer be theirs)."""

    def __init__(self, *parts: Buffer) -> None:
        self.parts = tuple(memoryview(part).cast("B") for part in parts)
        self.size = sum(part.nbytes for part in self.parts)

    def digest(self, algorithm: str = digests.SHA256) -> str:
        """The hex digest of the joined bytes (`digest` gives their SHA-256)."""
        hashed = digests.hasher(algorithm)
        for part in self.parts:
            hashed.update(part)
        return hashed.hexdigest()

    def join(self) -> bytes:
        return b"".join(self.parts)

    def chunks(
        self, size: int = CHUNK_BYTES, head: Callable[[int], bytes] | None = None
    ) -> Iterator[bytes]:
        """The joined bytes in chunks of `size` (the last one shorter), each a copy that may
        span several pieces: `chunks(self.join(), size=size)`, never holding more than a chunk.
        `head`: what to put before each chunk, given its length, in the same copy (a frame's
        head, `quorum.wire.frames`)."""
        pending: list[memoryview] = []
        room = size

        def joined() -> bytes:
            length = size - room
            return b"".join([head(length), *pending] if head is not None else pending)

        for part in self.parts:
            while part.nbytes:
                piece, part = part[:room], part[room:]
                pending.append(piece)
                room -= piece.nbytes
                if not room:
                    yield joined()
                    pending, room = [], size
        if pending:
            yield joined()


def _header(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None
) -> bytes:
    """The safetensors header (length prefix included) of tensors named with their dtype
    names and shapes, laid out back to back in the order given."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, kind, shape in tensors:
        nbytes = math.prod(shape) * _DTYPES[kind].itemsize
        header[name] = {
            "dtype": kind,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # tensors start 8-byte aligned, as safetensors writes them
    return struct.pack("<Q", len(text)) + text


def one_tensor_layout(name: str, kind: str, shape: tuple[int, ...]) -> tuple[bytes, Layout]:
    """The header and layout of a blob holding one tensor, without the tensor."""
    header = _header([(name, kind, shape)], None)
    return header, layout_of(header, len(header) + math.prod(shape) * _DTYPES[kind].itemsize)


def blank(name: str, kind: str, shape: tuple[int, ...]) -> tuple[memoryview, np.ndarray]:
    """A one-tensor blob, header written and tensor zero, and a writeable view of its tensor:
    what is computed in the view is the blob, sent as it is (no encoding copy). The zeros are
    the kernel's: a page takes memory when it is first written, not before."""
    header, layout = one_tensor_layout(name, kind, shape)
    data = np.zeros(layout.size, dtype=np.uint8)
    data[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    return data.data, data[len(header) :].view(_DTYPES[kind]).reshape(shape)


def raw(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return array.reshape(-1).data.cast("B")


def write(
    params: Mapping[str, np.ndarray], out: Writable, metadata: Mapping[str, str] | None = None
) -> None:
    """Writes `params` as a safetensors blob to `out`, tensor by tensor: no copy of the model
    (safetensors' own `save` copies every tensor, then the whole file, into bytes)."""
    for part in pieces(params, metadata).parts:
        out.write(part)


def encode(params: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialises tensors to safetensors bytes: one copy of the model, the bytes themselves
    (large models the server writes to files, `quorum.wire.blobfiles`; a site sends its
    update from its tensors, `pieces`)."""
    return pieces(params, metadata).join()


def sized_buffer(size: int) -> io.BytesIO:
    """An in-memory file of `size` bytes allocated at once. Written in order to its end, its
    `getvalue()` is a bytes object made without a copy (BytesIO hands over its buffer when the
    data fills it), where growing it chunk by chunk and copying out would cost the data twice."""
    out = io.BytesIO()
    if size:
        out.seek(size - 1)
        out.write(b"\0")
        out.seek(0)
    return out


def labelled_header(stream: BinaryIO, metadata: Mapping[str, str]) -> bytes:
    """Reads a blob's header from `stream`, which is left at the blob's first tensor byte, and
    returns the header again with `metadata` as its `__metadata__`: that and the rest of the
    stream are the blob's tensors, byte for byte, labelled (a large model is never copied)."""
    (header_len,) = struct.unpack("<Q", stream.read(8))
    if header_len > MAX_HEADER_BYTES:
        raise BlobError(f"header length {header_len} is over {MAX_HEADER_BYTES}")
    header = json.loads(stream.read(header_len))
    header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # tensors start 8-byte aligned, as safetensors writes them
    return struct.pack("<Q", len(text)) + text


def read_metadata(data: Buffer) -> dict[str, str]:
    """A blob's `__metadata__` (string pairs; empty when it has none)."""
    view = memoryview(data)
    (header_len,) = struct.unpack("<Q", view[:8])
    read_layout(data)  # checks the header
    metadata = json.loads(bytes(view[8 : 8 + header_len])).get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise BlobError("the header's __metadata__ is not a JSON object")
    return {str(k): str(v) for k, v in metadata.items()}


def read_layout(data: Buffer) -> Layout:
    """Parses and checks a blob's header; raises BlobError naming the first problem found."""
    view = memoryview(data)
    return layout_of(view[: 8 + header_length(view[:8], len(view))], len(view))


def header_length(prefix: Buffer, size: int) -> int:
    """The header length a blob of `size` bytes declares in its first 8 bytes, checked."""
    if size < 8 or len(prefix) < 8:
        raise BlobError(f"blob of {size} bytes is shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", memoryview(prefix)[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise BlobError(f"header length {header_len} does not fit a blob of {size} bytes")
    return int(header_len)


def layout_of(head: Buffer, size: int) -> Layout:
    """The layout of a blob of `size` bytes from its first bytes (`head`: the length prefix
    and the header), checked against that size: a file's layout without reading its tensors."""
    view = memoryview(head)
    header_len = header_length(view, size)
    if len(view) < 8 + header_len:
        raise BlobError(f"header of {header_len} bytes is cut short at {len(view) - 8}")
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise BlobError(f"header is not valid JSON: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(header, dict):
        raise BlobError("header is not a JSON object")
    specs: list[TensorSpec] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        specs.append(_tensor_spec(name, entry))
    specs.sort(key=lambda s: s.start)
    expected = 0
    for spec in specs:
        if spec.start != expected:
            raise BlobError(
                f"tensor {spec.name!r} starts at byte {spec.start}, expected {expected}"
            )
        expected = spec.end
    data_offset = 8 + header_len
    if data_offset + expected != size:
        raise BlobError(
            f"tensors cover {expected} bytes but the blob holds {size - data_offset} after "
            "its header"
        )
    return Layout(tuple(specs), data_offset)


def _tensor_spec(name: str, entry: object) -> TensorSpec:
    if not isinstance(entry, dict):
        raise BlobError(f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise BlobError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**48 for d in shape)
    ):
        raise BlobError(
            f"tensor {name!r}: shape {repr(shape)[:80]} is not a list of non-negative integers "
            f"(at most {MAX_DIMS} of them)"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise BlobError(f"tensor {name!r}: data_offsets {offsets!r} is not a pair of integers")
    start, end = offsets
    nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
    if start < 0 or end - start != nbytes:
        raise BlobError(
            f"tensor {name!r}: data_offsets [{start}, {end}] do not hold {nbytes} bytes of "
            f"{dtype} {tuple(shape)}"
        )
    return TensorSpec(name, dtype, tuple(shape), start, end)


def decode(data: Buffer, layout: Layout | None = None) -> Params:
    """Returns read-only numpy views of the blob's tensors, in byte order."""
    layout = layout or read_layout(data)
    buf = memoryview(data)
    return {
        t.name: np.frombuffer(
            buf, dtype=_DTYPES[t.dtype], count=t.numel, offset=layout.data_offset + t.start
        ).reshape(t.shape)
        for t in layout.tensors
    }


def as_flat(data: Buffer, layout: Layout) -> np.ndarray:
    """All tensors as one vector: a zero-copy view when the blob has a single float dtype
    (one contiguous region), else a float64 copy in byte order."""
    dtypes = {t.dtype for t in layout.tensors}
    if len(dtypes) == 1 and dtypes <= FLOAT_DTYPES:
        (dtype,) = dtypes
        return np.frombuffer(
            memoryview(data), dtype=_DTYPES[dtype], count=layout.numel, offset=layout.data_offset
        )
    return np.concatenate(
        [v.reshape(-1).astype(np.float64) for v in decode(data, layout).values()]
        or [np.zeros(0, np.float64)]
    )


def from_flat(vector: np.ndarray, layout: Layout) -> Params:
    """Splits a flat vector back into tensors of the layout's names, shapes and dtypes."""
    if vector.size != layout.numel:
        raise BlobError(f"vector of {vector.size} values does not fit a layout of {layout.numel}")
    out: Params = {}
    pos = 0
    for t in layout.tensors:
        piece = vector[pos : pos + t.numel].reshape(t.shape)
        dtype = _DTYPES[t.dtype]
        if t.dtype not in FLOAT_DTYPES:
            piece = np.rint(piece)
        out[t.name] = piece.astype(dtype, copy=False)
        pos += t.numel
    return out


def dtype_of(name: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype name ("F32", ...)."""
    return _DTYPES[name]


def flat_pieces(
    layout: Layout, blocks: Iterable[np.ndarray]
) -> Iterator[tuple[np.ndarray, np.dtype]]:
    """Consecutive blocks of flat values cut at `layout`'s tensors: each piece and the dtype
    its tensor is written in (values of an integer or boolean tensor rounded first, as
    `from_flat` casts). A piece may be a view of its block."""
    tensors = iter(layout.tensors)
    tensor, left = None, 0
    for block in blocks:
        while block.shape[0]:
            while left == 0:
                tensor = next(tensors, None)
                if tensor is None:
                    raise BlobError(f"more values than the layout's {layout.numel}")
                left = tensor.numel
            assert tensor is not None
            piece, block = block[:left], block[left:]
            left -= piece.shape[0]
            if tensor.dtype not in FLOAT_DTYPES:
                piece = np.rint(piece)
            yield piece, _DTYPES[tensor.dtype]
    if left or any(t.numel for t in tensors):
        raise BlobError(f"fewer values than the layout's {layout.numel}")


def all_finite(data: Buffer, layout: Layout) -> bool:
    for t in layout.tensors:
        if t.dtype in FLOAT_DTYPES:
            values = np.frombuffer(
                memoryview(data),
                dtype=_DTYPES[t.dtype],
                count=t.numel,
                offset=layout.data_offset + t.start,
            )
            # Block by block: the boolean mask of a whole large tensor would be a temporary of
            # its element count, per upload being validated.
            for start in range(0, t.numel, FINITE_BLOCK):
                if not np.isfinite(values[start : start + FINITE_BLOCK]).all():
                    return False
    return True


def chunks(data: Buffer, offset: int = 0, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(offset, len(view), size):
        yield view[start : start + size]
