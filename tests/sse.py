"""Reads a server-sent event stream (the admin API's /api/v1/events/stream) with httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


def _frame(lines: list[str]) -> dict[str, Any]:
    fields = dict(line.split(": ", 1) for line in lines)
    return {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}


async def aframes(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each event as {"id", "event", "data"}, and each comment line as {"comment": text}."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            lines.append(line)
        elif lines:
            yield _frame(lines)
            lines = []
