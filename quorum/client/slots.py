"""Where a site's training and evaluation run: worker threads, at most a bounded number at once.

A site agent alone runs one task at a time; a simulation host runs many virtual sites, whose
fits share the host's cores (or one GPU) through one `Slots`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Slots:
    def __init__(self, count: int | None = None) -> None:
        """`count` calls at once (None: no bound beyond the agent's one task at a time)."""
        self._free = asyncio.Semaphore(count) if count is not None else None

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a worker thread once a slot is free."""
        if self._free is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        async with self._free:
            return await asyncio.to_thread(fn, *args, **kwargs)
