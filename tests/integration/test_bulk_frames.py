"""The server's bulk calls behind its interceptor, over real gRPC: what each upload frame
becomes (a view of the frame, or protobuf's message), undecodable frames refused as
INVALID_ARGUMENT, and download frames that a site's stub and a generated stub both read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from quorum.client.transfer import FederationStub
from quorum.ports import free_port
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.server.undecodable import RefuseUndecodable
from quorum.wire import frames

Seen = tuple[str, bytes | None]


class StandIn(pb_grpc.FederationServicer):  # type: ignore[misc]
    """Notes what each upload frame became; serves one framed chunk."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    async def Download(self, request: pb.DownloadRequest, context: Any) -> AsyncIterator[bytes]:
        yield frames.blob_chunk(7, 10, b"abc")

    async def Upload(
        self, requests: AsyncIterator[frames.UploadFrame], context: Any
    ) -> AsyncIterator[pb.UploadReply]:
        async for message in requests:
            chunk = frames.chunk_of(message)
            self.seen.append((type(message).__name__, None if chunk is None else bytes(chunk)))
        yield pb.UploadReply(receipt=pb.UploadReceipt(accepted=True))


async def _call(sent: list[bytes]) -> tuple[list[Seen], grpc.StatusCode, list[Any]]:
    """Sends `sent` as raw frames to Upload; then downloads with both kinds of stub."""
    service = StandIn()
    port = free_port()
    server = grpc.aio.server(interceptors=[RefuseUndecodable()])
    pb_grpc.add_FederationServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = channel.stream_stream(frames.UPLOAD, lambda b: b, lambda b: b)
            code = grpc.StatusCode.OK
            try:
                [_ async for _ in raw(iter(sent), timeout=10)]
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            request = pb.DownloadRequest(digest="d")
            downloads = [
                [c async for c in stub.Download(request, timeout=10)]
                for stub in (FederationStub(channel), pb_grpc.FederationStub(channel))
            ]
    finally:
        await server.stop(None)
    return service.seen, code, downloads


def test_upload_frames_are_views_or_protobufs_messages() -> None:
    sent = [
        frames.upload_chunk_head(3) + b"abc",
        frames.upload_chunk_head(0),  # an empty chunk
        b"",  # an empty message: no chunk
        pb.UploadMessage(header=pb.UploadHeader()).SerializeToString(),
        b"\x12\x01a\x12\x01b",  # the chunk field twice: the last counts
    ]
    seen, code, downloads = asyncio.run(_call(sent))
    assert code == grpc.StatusCode.OK
    assert seen == [
        ("memoryview", b"abc"),
        ("memoryview", b""),
        ("UploadMessage", None),
        ("UploadMessage", None),
        ("UploadMessage", b"b"),
    ]
    framed, generated = downloads
    assert [type(c) for c in framed] == [frames.ChunkView]
    assert [(c.offset, c.total_size, bytes(c.data)) for c in framed + generated] == [
        (7, 10, b"abc")
    ] * 2


@pytest.mark.parametrize(
    "bad", [b"\xff\xff\xff", frames.upload_chunk_head(5) + b"ab"], ids=["garbage", "truncated"]
)
def test_an_undecodable_upload_frame_is_refused_as_invalid(bad: bytes) -> None:
    seen, code, _ = asyncio.run(_call([frames.upload_chunk_head(3) + b"abc", bad]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert seen == [("memoryview", b"abc")]
