"""Connected sites: one session per site, each with an outbox drained by its gRPC stream."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quorum.proto import federation_pb2 as pb

log = logging.getLogger("quorum.server")

OUTBOX_LIMIT = 1000
"""Messages a session may have waiting for its site to read them: a round sends a handful."""


@dataclass(eq=False)
class Session:
    id: str
    site: str
    task: str
    outbox: asyncio.Queue[pb.ServerMessage | None] = field(default_factory=asyncio.Queue)
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    closed: bool = False
    ended: bool = False
    """Its bookkeeping is done (`FederationService._ended`): tasks lost, site disconnected."""

    def send(self, message: pb.ServerMessage) -> None:
        if self.closed:
            return
        if self.outbox.qsize() >= OUTBOX_LIMIT:
            # The site reads nothing of its stream (and may be sending what earns notices):
            # what it would be sent is let go with its session, not kept without bound.
            log.warning("event=session_backlog site=%s queued=%d", self.site, OUTBOX_LIMIT)
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.close()
            return
        self.outbox.put_nowait(message)

    def close(self) -> None:
        """Ends the stream: the writer stops at the sentinel."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


class SessionRegistry:
    """Indexed by id and by site, so that a join, a lookup and a count cost the same with ten
    thousand sites as with four (a simulation's sites all join within seconds)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_site: dict[str, Session] = {}
        self._changed = asyncio.Condition()

    def open(self, site: str, task: str) -> Session:
        """A new session for `site`; an older session of the same site is closed (the site
        reconnected, e.g. after a network fault the server has not noticed yet)."""
        old = self._by_site.get(site)
        if old is not None:
            old.close()
        session = Session(id=secrets.token_hex(32), site=site, task=task)
        self._by_id[session.id] = session
        self._by_site[site] = session
        self.wake()
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._by_id.get(session_id)
        return session if session is not None and not session.closed else None

    def drop(self, session: Session) -> None:
        session.close()
        if self._by_id.get(session.id) is session:
            del self._by_id[session.id]
            self.wake()
        if self._by_site.get(session.site) is session:
            del self._by_site[session.site]

    def connected(self) -> list[Session]:
        return sorted((s for s in self._by_site.values() if not s.closed), key=lambda s: s.site)

    def count(self, task: str | None = None) -> int:
        """Connected sites (a closed session leaves the index when its stream ends), those
        whose agents run `task` where given."""
        return sum(1 for s in self._by_site.values() if not s.closed and task in (None, s.task))

    def by_site(self, site: str) -> Session | None:
        session = self._by_site.get(site)
        return session if session is not None and not session.closed else None

    async def wait_for(
        self,
        count: int,
        timeout: float,
        unless: Callable[[], bool] = lambda: False,
        task: str | None = None,
    ) -> list[Session]:
        """Waits until at least `count` sites (running `task`, where given) are connected,
        `unless()` holds (checked at each change and each `wake()`) or `timeout` passes."""

        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.count(task) >= count or unless())

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            pass
        return self.connected()

    def wake(self) -> None:
        """Makes waiters check again: at each change, and when an `unless` may hold."""

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())
