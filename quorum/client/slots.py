"""Where a site's training and evaluation run: worker threads, at most a bounded number at once.

A site agent runs one task at a time, also across its sessions: a fit's thread cannot be
stopped, so a session that ends while it trains leaves it running, and the next session's fit
waits for it (two fits of one site side by side would train the same model object, spend its
privacy budget twice over a check that saw neither, and hold its memory twice). A simulation
host runs many virtual sites, whose one-at-a-time slots lie within the host's shared `Slots`
(its cores, or one GPU).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from quorum.threads import to_the_end

P = ParamSpec("P")
T = TypeVar("T")


class Slots:
    def __init__(self, count: int | None = None, *, within: Slots | None = None) -> None:
        """`count` calls at once (None: no bound of its own), each also taking a slot of
        `within` where given."""
        self._free = asyncio.Semaphore(count) if count is not None else None
        self._within = within

    @property
    def busy(self) -> bool:
        """Whether every slot of its own is taken: for one slot (a site's), a task's thread
        runs."""
        return self._free is not None and self._free.locked()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a worker thread once a slot is free. The slot is held until
        the thread is over, even when the caller is cancelled."""
        async with self._free or contextlib.nullcontext():
            if self._within is not None:
                return await self._within.run(fn, *args, **kwargs)
            return await to_the_end(fn, *args, **kwargs)
