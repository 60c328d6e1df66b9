"""A run's events for `quorum runs logs`: the past ones (`GET /api/v1/events?run_id=`) or, with
`--follow`, the server-sent event stream (`GET /api/v1/events/stream?run_id=`), resumed with
`Last-Event-ID` after a dropped connection, until the run reaches a final state."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from httpx_sse import EventSource

from quorum.admin.client import AdminClient
from quorum.errors import QuorumError
from quorum.operator.render import stdout, when

FINAL = frozenset({"run_completed", "run_stopped", "run_failed"})
RECONNECT_FOR_S = 60.0
"""How long a follower tries to reconnect (a server restart) before it gives up."""
PAGE = 500


def past_events(api: AdminClient, run_id: str) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        page = api.get("/api/v1/events", run_id=run_id, after=after, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1]["id"]


def follow(api: AdminClient, run_id: str, show: Callable[[dict[str, Any]], None]) -> None:
    """Shows each event of the run, past and new, once, in order; returns after the event that
    ends the run. A connection that drops (a server restart, a proxy) is opened again with the
    id of the last event shown; after RECONNECT_FOR_S without a stream, raises QuorumError."""
    last: int | None = None
    lost_since: float | None = None
    delay = 0.2
    while True:
        headers = {"Last-Event-ID": str(last)} if last is not None else None
        try:
            with api.stream("/api/v1/events/stream", headers=headers, run_id=run_id) as response:
                lost_since, delay = None, 0.2
                for sse in EventSource(response).iter_sse():
                    if not sse.data:
                        continue
                    event = json.loads(sse.data)
                    last = int(event["id"])
                    show(event)
                    if event["kind"] in FINAL:
                        return
        except httpx.TransportError as exc:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > RECONNECT_FOR_S:
                raise QuorumError(
                    f"lost the event stream of {run_id} at {api.base_url} for over "
                    f"{RECONNECT_FOR_S:.0f} s ({exc or type(exc).__name__}); the events up to "
                    f"id {last} were shown"
                ) from None
        # The stream ended or dropped before the run did: the server went away. Wait a little
        # longer each time, so that a restarting server is not hammered.
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def print_event(event: dict[str, Any]) -> None:
    """2026-12-04 13:01:30Z  round_completed  round=3 attempt=1"""
    details = " ".join(
        f"{k}={v}"
        for k, v in event.items()
        if k not in ("id", "at", "kind", "run_id") and v is not None
    )
    stdout.print(f"{when(event['at'])}  {event['kind']:<16} {details}")
