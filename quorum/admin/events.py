"""Events in the admin API: the recorded events (`GET /api/v1/events`) and their live stream
(`GET /api/v1/events/stream`): server-sent events, resumable.

Each event is sent as `id`, `event` (its kind) and `data` (the event as one line of JSON, the
same object as an item of `GET /api/v1/events`). A client that reconnects with `Last-Event-ID`
gets exactly the events after that one. Streams wake when the store records an event (no
polling), send a comment line when idle so that proxies keep the connection, and end when the
client goes away or the server shuts down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from quorum.admin.auth import hash_token
from quorum.server.records import STORED_INT_MAX, Event
from quorum.server.store import Store

KEEPALIVE_S = 15.0
BATCH = 500


class EventOut(BaseModel):
    """An event: its id, time, kind and run, then the fields its kind carries (a site, a round
    and attempt, an error...), each a key of its own."""

    model_config = ConfigDict(extra="allow")

    id: int
    at: float
    kind: str
    run_id: str | None

    @classmethod
    def of(cls, event: Event) -> EventOut:
        return cls.model_validate(event.flat())


class EventFeed:
    """Tells open streams that the store recorded events; `close()` ends them all."""

    def __init__(self, store: Store, keepalive_s: float = KEEPALIVE_S) -> None:
        self.store = store
        self.keepalive_s = keepalive_s
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.open_streams = 0
        """Streams being served now (a Prometheus gauge)."""
        store.watch_events(self._recorded)

    def _recorded(self) -> None:
        # The store may be written from a worker thread: hand the wake-up to the loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """Ends every stream (the server is shutting down: uvicorn waits for open responses)."""
        self.closed = True
        self._wake()

    async def stream(
        self, after: int, run_id: str | None, token_hash: str | None = None
    ) -> AsyncIterator[str]:
        """`token_hash`: the stream ends once that token is revoked (every event wakes it,
        and revoking one is an event)."""
        self._loop = asyncio.get_running_loop()
        self.open_streams += 1
        try:
            last = after
            while not self.closed and (
                token_hash is None or self.store.token_role(token_hash) is not None
            ):
                changed = self._changed  # taken before reading: no event slips in between
                batch = self.store.events(last, BATCH, run_id)
                for event in batch:
                    yield _frame(event)
                if batch:
                    last = batch[-1].id
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), self.keepalive_s)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:  # also when the client goes away: Starlette cancels the response
            self.open_streams -= 1


def _frame(event: Event) -> str:
    data = json.dumps(event.flat(), default=str)  # one line: JSON escapes newlines in strings
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


def resume_after(after: int, last_event_id: str | None) -> int:
    """Where a stream starts: after the `Last-Event-ID` a reconnecting client sends, where it
    is an id (ASCII digits, "²" is a digit to `str.isdigit` but not to `int`, and no larger
    than the store holds), else after `after`; a stray header is ignored."""
    resumed = (last_event_id or "").strip()
    if (
        resumed.isascii()
        and resumed.isdigit()
        and len(resumed) <= len(str(STORED_INT_MAX))  # int() refuses over 4,300 digits
        and int(resumed) <= STORED_INT_MAX
    ):
        return int(resumed)
    return after


def events_router(feed: EventFeed, viewer: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/events", dependencies=[viewer])
    async def events(
        after: Annotated[int, Query(ge=0, le=STORED_INT_MAX)] = 0,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        run_id: str | None = None,
    ) -> list[EventOut]:
        """Events after the id `after`, in order: all of them, or those of run `run_id`."""
        return [EventOut.of(e) for e in feed.store.events(after, limit, run_id)]

    @router.get(
        "/api/v1/events/stream",
        dependencies=[viewer],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream(
        request: Request,
        run_id: str | None = None,
        after: Annotated[int, Query(ge=0, le=STORED_INT_MAX)] = 0,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events: the events after `after` (or after the `Last-Event-ID` header a
        reconnecting client sends), then each new one as it is recorded; only `run_id`'s when
        given. `: keep-alive` comment lines every 15 s when idle."""
        start = resume_after(after, last_event_id)
        return StreamingResponse(
            # `viewer` checked the header: "Bearer TOKEN", read as HTTPBearer reads it
            feed.stream(
                start, run_id, hash_token(request.headers["authorization"].partition(" ")[2])
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router
