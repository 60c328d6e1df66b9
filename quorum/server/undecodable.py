"""Request frames that are no message of their method's type end the call with
INVALID_ARGUMENT, named.

gRPC's aio server parses each request inside its own machinery: bytes that do not parse raise
DecodeError from wherever a handler awaits its next message (or before a unary handler runs),
which gRPC answers UNKNOWN and logs with a traceback, frame after frame, so a peer sending
garbage would fill the log. This interceptor parses leniently and refuses such a call once, in
a line of its own. It also gives the bulk calls their hand-written frames
(`quorum.server.bulk_frames`)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from quorum.server.bulk_frames import framed

log = logging.getLogger("quorum.server")


class Undecodable:
    """Stands in for a request that did not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class RefuseUndecodable(_Interceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        # An RpcMethodHandler (a named tuple; grpc-stubs type it for the sync server only).
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        # The bulk calls' own parser is the one made lenient here.
        handler = framed(details.method, handler)
        parse = _lenient(handler.request_deserializer)
        if handler.unary_stream is not None:
            return handler._replace(
                request_deserializer=parse, unary_stream=_unary_stream(handler.unary_stream)
            )
        if handler.stream_stream is not None:
            return handler._replace(
                request_deserializer=parse, stream_stream=_stream_stream(handler.stream_stream)
            )
        return handler


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return parse_or_mark


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], request: Undecodable) -> None:
    log.warning("event=undecodable_request peer=%s error=%s", context.peer(), request.reason)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {request.reason}")


def _unary_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behaviour):  # it writes its replies (`context.write`)

        async def checked_writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            await behaviour(request, context)

        return checked_writer

    async def checked(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        async for reply in behaviour(request, context):
            yield reply

    return checked


def _stream_stream(
    behaviour: Callable[..., AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async def parsed() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Undecodable):
                    await _refuse(context, request)
                yield request

        async for reply in behaviour(parsed(), context):
            yield reply

    return checked
