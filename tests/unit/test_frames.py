"""Bulk chunk frames written and read by hand (`quorum.wire.frames`) are protobuf's own bytes:
what protobuf writes, they read; what they write, protobuf reads; any frame laid out otherwise
is left to protobuf."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from quorum.proto import federation_pb2 as pb
from quorum.wire import blobs, frames

U64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(offset=U64, total_size=U64, data=st.binary(max_size=300))
def test_a_blob_chunk_is_written_and_read_as_protobuf_does(
    offset: int, total_size: int, data: bytes
) -> None:
    frame = frames.blob_chunk(offset, total_size, data)
    assert (
        frame == pb.BlobChunk(offset=offset, total_size=total_size, data=data).SerializeToString()
    )
    read = frames.parse_blob_chunk(frame)
    assert isinstance(read, frames.ChunkView)  # read by hand, its data a view of the frame
    assert (read.offset, read.total_size, bytes(read.data)) == (offset, total_size, data)


@given(data=st.binary(max_size=300))
def test_an_upload_chunk_is_written_and_read_as_protobuf_does(data: bytes) -> None:
    frame = frames.upload_chunk_head(len(data)) + data
    assert frame == pb.UploadMessage(chunk=data).SerializeToString()
    read = frames.parse_upload(frame)
    assert isinstance(read, memoryview) and read.obj is frame and bytes(read) == data
    assert frames.chunk_of(read) is read


def test_a_frame_laid_out_otherwise_is_left_to_protobuf() -> None:
    chunk = pb.BlobChunk(offset=5, total_size=9, data=b"abc")
    # The data first, then the offset: a reader takes fields in any order.
    reordered = (
        pb.BlobChunk(data=b"abc").SerializeToString()
        + pb.BlobChunk(offset=5, total_size=9).SerializeToString()
    )
    read = frames.parse_blob_chunk(reordered)
    assert isinstance(read, pb.BlobChunk) and read == chunk
    # Two chunk fields: the last one counts.
    twice = pb.UploadMessage(chunk=b"old").SerializeToString() + frames.upload_chunk_head(3)
    read_upload = frames.parse_upload(twice + b"new")
    assert isinstance(read_upload, pb.UploadMessage) and frames.chunk_of(read_upload) == b"new"
    header = pb.UploadMessage(header=pb.UploadHeader(task_id="t", size=3))
    read_header = frames.parse_upload(header.SerializeToString())
    assert read_header == header and frames.chunk_of(read_header) is None


@pytest.mark.parametrize(
    "frame",
    [
        frames.upload_chunk_head(10) + b"short",  # the length says more than there is
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint past 64 bits
        b"\xff\xff\xff",
    ],
    ids=["truncated", "long-varint", "garbage"],
)
def test_a_frame_that_is_no_message_fails_as_protobuf_fails(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        frames.parse_upload(frame)
    with pytest.raises(DecodeError):
        frames.parse_blob_chunk(b"\x1a" + frame)


def test_a_sites_upload_frames_are_its_blobs_chunks_in_messages() -> None:
    params: blobs.Params = {
        "a": np.arange(600_001, dtype=np.float32),
        "b": np.ones((3, 4), np.float64),
    }
    pieces = blobs.pieces(params)
    sent = list(pieces.chunks(head=frames.upload_chunk_head))
    assert sent == [
        pb.UploadMessage(chunk=bytes(chunk)).SerializeToString()
        for chunk in blobs.chunks(blobs.encode(params))
    ]
    assert len(sent) == 2  # 2.4 MB: a whole chunk and a short one


@pytest.mark.parametrize(
    "frame",
    [
        b"\x08" + b"\x80" * 9 + b"\x02" + b"\x1a\x03abc",  # an offset of 2**64: protobuf reads 0
        b"\x10" + b"\xff" * 9 + b"\x7f",  # a total size past 64 bits: its low 64 bits
    ],
    ids=["offset-2**64", "total-past-64-bits"],
)
def test_a_varint_past_64_bits_is_read_as_protobuf_reads_it(frame: bytes) -> None:
    read = frames.parse_blob_chunk(frame)
    want = pb.BlobChunk.FromString(frame)
    assert (read.offset, read.total_size, bytes(read.data)) == (
        want.offset,
        want.total_size,
        want.data,
    )
