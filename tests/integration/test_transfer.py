"""The site's download over real gRPC against a scripted Download service: resumed after a
broken stream into its one pre-sized buffer, and refused when the bytes are not the blob."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from quorum.client.transfer import BlobCache, download
from quorum.errors import BlobError
from quorum.ports import free_port
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.wire import blobs
from quorum.wire.channel import GRPC_OPTIONS

BLOB = bytes(range(256)) * 20_000  # 5 MB: several 1 MiB chunks


class Scripted(pb_grpc.FederationServicer):  # type: ignore[misc]
    """Serves `data` from the requested offset; the first stream breaks after `break_after`
    chunks (UNAVAILABLE, as a restarting server's would)."""

    def __init__(self, data: bytes, break_after: int | None = None) -> None:
        self.data = data
        self.break_after = break_after
        self.offsets: list[int] = []

    async def Download(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BlobChunk]:
        self.offsets.append(request.offset)
        for i, chunk in enumerate(blobs.chunks(self.data, request.offset)):
            if self.break_after is not None and i == self.break_after:
                self.break_after = None
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            offset = request.offset + i * blobs.CHUNK_BYTES
            yield pb.BlobChunk(offset=offset, total_size=len(self.data), data=bytes(chunk))


async def fetch(service: Scripted, size: int = len(BLOB)) -> bytes:
    port = free_port()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FederationStub(channel)
            return await download(stub, "s", blobs.digest(BLOB), size, BlobCache(keep=0))
    finally:
        await server.stop(None)


def test_a_broken_download_resumes_where_it_stopped() -> None:
    service = Scripted(BLOB, break_after=2)
    data = asyncio.run(fetch(service))
    assert hashlib.sha256(data).hexdigest() == blobs.digest(BLOB) and data == BLOB
    assert service.offsets == [0, 2 * blobs.CHUNK_BYTES]


@pytest.mark.parametrize(
    ("served", "size", "match"),
    [
        (BLOB + b"x", len(BLOB), "longer than"),
        (BLOB[:-1] + b"x", len(BLOB), "does not match digest"),
        (BLOB[:-10], len(BLOB), f"ended at {len(BLOB) - 10} of {len(BLOB)} bytes"),
    ],
    ids=["longer", "other-bytes", "shorter"],
)
def test_bytes_that_are_not_the_blob_are_refused(served: bytes, size: int, match: str) -> None:
    with pytest.raises(BlobError, match=match):
        asyncio.run(fetch(Scripted(served), size))
