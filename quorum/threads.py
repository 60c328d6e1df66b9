"""Work handed from the event loop to a worker thread that must not be left running unseen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def to_the_end(work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread` that returns only once the thread is over, even when the awaiting
    task is cancelled (a site hung up, a run was stopped, a site's session ended): a thread
    cannot be stopped, and what it writes (a round's sum under the fold lock, a staged
    checkpoint, the privacy ledger, a site's model under training) must not change under
    whatever the cancellation lets run next."""
    running = asyncio.ensure_future(asyncio.to_thread(work, *args, **kwargs))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        raise
