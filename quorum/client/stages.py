"""What the multi-stage tasks (SecAgg's masked fit, a gossip round) share at the site: waiting
for local training while the server may end the site's part of the round."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn

from quorum.proto import federation_pb2 as pb
from quorum.task import FitResult


async def unless_ended(
    training: asyncio.Future[tuple[bytes, FitResult]],
    inbox: asyncio.Queue[pb.ServerMessage],
    unexpected: Callable[[pb.ServerMessage, str], NoReturn],
    want: str,
) -> tuple[bytes, FitResult]:
    """The training's result, unless a message for the task arrives first: the server ended the
    site's part (a notice) or is ahead of it; `unexpected(message, want)` raises the task's
    error then."""
    message = asyncio.ensure_future(inbox.get())
    waiting: set[asyncio.Future[Any]] = {training, message}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        message.cancel()
    if message.done() and not message.cancelled():
        unexpected(message.result(), want)
    return training.result()
