"""A blob arriving in chunks (an upload at the server, a download at a site): written in order
to one sink (the server's spool file, a site's buffer of the announced size) and hashed as it
arrives.

Each chunk is hashed and written in a worker thread while the next one arrives, so the digest is
ready with the last byte and checking it is no second pass over the blob. The caller checks,
with its own words, that each chunk fits and that the blob is whole before `finish`.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Protocol

from quorum.wire import blobs


class Sink(Protocol):
    def write(self, data: blobs.Buffer, /) -> int: ...


class Incoming:
    def __init__(self, sink: Sink) -> None:
        self.received = 0
        self._sink = sink
        self._sha = hashlib.sha256()
        self._taking: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes) -> None:
        """Appends the next chunk."""
        self.received += len(chunk)
        # In order: the previous chunk is written before this one starts (hashlib and file
        # writes let go of the GIL, so this runs beside the next chunk's arrival).
        if self._taking is not None:
            await self._taking
        self._taking = asyncio.ensure_future(asyncio.to_thread(self._take, chunk))

    def _take(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self._sink.write(chunk)

    async def finish(self) -> str:
        """Waits for the last chunk to be written; the blob's SHA-256 (hex)."""
        if self._taking is not None:
            await self._taking
            self._taking = None
        return self._sha.hexdigest()
