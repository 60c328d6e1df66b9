"""The federation service's bulk calls with hand-written frames (`quorum.wire.frames`):
`Download` yields its chunks serialised already, and `Upload` reads each chunk as a view of its
frame. Only the server's (de)serialisers change: the bytes on the wire are protobuf's, and
sites of every version read and write them as before."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from quorum.wire import frames

DOWNLOAD = "/quorum.v1.Federation/Download"
UPLOAD = "/quorum.v1.Federation/Upload"

if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class BulkFrames(_Interceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        # An RpcMethodHandler (a named tuple; grpc-stubs type it for the sync server only).
        handler = await continuation(details)
        if handler is None:
            return handler
        if details.method == DOWNLOAD:
            return handler._replace(response_serializer=_serialised)
        if details.method == UPLOAD:
            return handler._replace(request_deserializer=frames.parse_upload)
        return handler


def _serialised(frame: bytes) -> bytes:
    """A reply the handler serialised itself (`frames.blob_chunk`)."""
    return frame
