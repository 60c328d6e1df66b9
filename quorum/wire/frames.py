"""Bulk chunks as protobuf frames written and read by hand, without protobuf's copies.

A 2 MiB chunk put in a protobuf message is copied into it, then again as the message is
serialised (upb grows its output buffer as it goes, copying on the way); a frame parsed is
copied into its message, and again when its bytes field is read. For a 1 GB model that is
several GB of copies per round at the server, which sends every download and takes every
upload: py-spy found upb's copies the largest part of the server's CPU outside the sum's
arithmetic and the new model's file.

These functions write the bytes protobuf writes for a `BlobChunk` and for an `UploadMessage`
chunk (protobuf's encoding: a tag per field, varints, length-prefixed bytes), with one copy of
the data, and read the chunk of either as a view of the frame gRPC handed over. Any other
frame (a header, or a chunk encoded otherwise: protobuf readers take fields in any order, and
again) is parsed by protobuf as before, so either end may be an ordinary protobuf peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from quorum.proto import federation_pb2 as pb
from quorum.wire.blobs import Buffer

# Tags: (field number << 3) | wire type (0: varint, 2: length-delimited).
_BLOB_OFFSET = 1 << 3 | 0
_BLOB_TOTAL_SIZE = 2 << 3 | 0
_BLOB_DATA = 3 << 3 | 2
_UPLOAD_CHUNK = 2 << 3 | 2
_MAX_VARINT_BYTES = 10
_UINT64 = (1 << 64) - 1

DOWNLOAD = "/quorum.v1.Federation/Download"
UPLOAD = "/quorum.v1.Federation/Upload"
"""The bulk calls' method paths (`proto/quorum/v1/federation.proto`)."""

UploadFrame = pb.UploadMessage | memoryview
"""An upload's frame as `parse_upload` gives it: a chunk's bytes, or any other message."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def blob_chunk(offset: int, total_size: int, data: Buffer) -> bytes:
    """`BlobChunk(offset=, total_size=, data=)` serialised as protobuf serialises it (fields
    left out at their default, zero or empty)."""
    head = bytearray()
    if offset:
        head += bytes([_BLOB_OFFSET]) + _varint(offset)
    if total_size:
        head += bytes([_BLOB_TOTAL_SIZE]) + _varint(total_size)
    length = memoryview(data).nbytes
    if length:
        head += bytes([_BLOB_DATA]) + _varint(length)
    return b"".join((head, data))


def upload_chunk_head(length: int) -> bytes:
    """What comes before a chunk of `length` bytes in `UploadMessage(chunk=...)` serialised as
    protobuf serialises it: the frame is the two joined."""
    return bytes([_UPLOAD_CHUNK]) + _varint(length)


def serialise_upload(message: pb.UploadMessage | bytes) -> bytes:
    """A site's upload frame: a chunk's, joined already (`upload_chunk_head`), or a message."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def parse_upload(frame: bytes) -> UploadFrame:
    """An upload's frame: the chunk's bytes, a view of `frame`, when the frame is one chunk
    field alone (as protobuf writes it); else the message protobuf parses (DecodeError when it
    is none)."""
    if frame[:1] == bytes([_UPLOAD_CHUNK]):
        length, start = _read_varint(frame, 1)
        if length is not None and start + length == len(frame):
            return memoryview(frame)[start:]
    return pb.UploadMessage.FromString(frame)


@dataclass(frozen=True)
class ChunkView:
    """A `BlobChunk` read by hand: its data a view of its frame."""

    offset: int
    total_size: int
    data: memoryview


def parse_blob_chunk(frame: bytes) -> ChunkView | pb.BlobChunk:
    """A download's frame: read by hand when it is laid out as protobuf writes a `BlobChunk`
    (its fields in order, each at most once, the data last), else parsed by protobuf."""
    at, values = 0, [0, 0]
    for index, tag in enumerate((_BLOB_OFFSET, _BLOB_TOTAL_SIZE)):
        if frame[at : at + 1] == bytes([tag]):
            value, at = _read_varint(frame, at + 1)
            if value is None:
                return pb.BlobChunk.FromString(frame)
            values[index] = value
    view = memoryview(frame)
    if at == len(frame):
        return ChunkView(values[0], values[1], view[at:])
    if frame[at : at + 1] == bytes([_BLOB_DATA]):
        length, start = _read_varint(frame, at + 1)
        if length is not None and start + length == len(frame):
            return ChunkView(values[0], values[1], view[start:])
    return pb.BlobChunk.FromString(frame)


def _read_varint(frame: bytes, at: int) -> tuple[int | None, int]:
    """The varint at `at` and where it ends; None when there is none."""
    for end in range(at + 1, min(len(frame), at + _MAX_VARINT_BYTES) + 1):
        if frame[end - 1] < 0x80:
            return _unvarint(frame[at:end]), end
    return None, at


def _unvarint(data: bytes) -> int:
    # Bits past 64 are dropped, as protobuf drops them.
    return sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(data)) & _UINT64


def chunk_of(frame: UploadFrame) -> memoryview | bytes | None:
    """The chunk an upload's frame carries; None for a frame that is no chunk (a header)."""
    if isinstance(frame, memoryview):
        return frame
    return frame.chunk if frame.WhichOneof("kind") == "chunk" else None
