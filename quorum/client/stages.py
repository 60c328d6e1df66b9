"""What the multi-stage tasks (SecAgg's masked fit, a gossip round) share at the site: waiting
for local training while the server may end the site's part of the round."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
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


@contextlib.asynccontextmanager
async def training_awaited(
    training: asyncio.Future[Any], log: logging.Logger | logging.LoggerAdapter[Any], task_id: str
) -> AsyncIterator[None]:
    """Runs the task's stages, then waits for its training however they ended: a fit's thread
    cannot be stopped, and no two fits of a site may run at once (the next offer may be the
    same round's next attempt). A fit's error that is not the one the stages raised (theirs is
    the task's) is logged."""
    raised: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        raised = exc
        raise
    finally:
        await asyncio.wait({training})
        if not training.cancelled() and training.exception() not in (None, raised):
            log.warning("event=training_failed task_id=%s error=%r", task_id, training.exception())
