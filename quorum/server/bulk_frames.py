"""The federation service's bulk calls with hand-written frames (`quorum.wire.frames`):
`Download` yields its chunks serialised already, and `Upload` reads each chunk as a view of its
frame. Only the server's (de)serialisers change: the bytes on the wire are protobuf's, and
sites of every version read and write them as before. The server's one interceptor
(`quorum.server.undecodable.RefuseUndecodable`) applies `framed` to every call's handler: the
service's `Download` yields bytes that only this serialiser passes on."""

from __future__ import annotations

from typing import Any

from quorum.wire import frames


def framed(method: str, handler: Any) -> Any:
    """`handler` (an RpcMethodHandler, the generated code's) of the call `method`, with the
    frames' (de)serialiser where it is a bulk call."""
    if method == frames.DOWNLOAD:
        return handler._replace(response_serializer=_serialised)
    if method == frames.UPLOAD:
        return handler._replace(request_deserializer=frames.parse_upload)
    return handler


def _serialised(frame: bytes) -> bytes:
    """A reply the handler serialised itself (`frames.blob_chunk`)."""
    return frame
