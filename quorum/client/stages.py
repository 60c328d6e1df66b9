"""What the multi-stage tasks (SecAgg's masked fit, a gossip round) share at the site: waiting
for local training while the server may end the site's part of the round."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from quorum.proto import federation_pb2 as pb

Trained = TypeVar("Trained")
"""What the task's training gives: the model it trained from, or the model it made, and the
fit's result."""


async def unless_ended(
    training: asyncio.Future[Trained],
    inbox: asyncio.Queue[pb.ServerMessage],
    unexpected: Callable[[pb.ServerMessage, str], NoReturn],
    want: str,
) -> Trained:
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
