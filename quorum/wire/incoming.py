"""A blob arriving in chunks (an upload at the server, a download at a site): written in order
to one sink (the server's spool file, a site's buffer of the announced size) and hashed as it
arrives.

Each chunk is hashed and written in a worker thread while the next one arrives, so the digest is
ready with the last byte and checking it is no second pass over the blob. The caller checks,
with its own words, that each chunk fits and that the blob is whole before `finish`.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Protocol

from quorum.wire import blobs, digests


class Sink(Protocol):
    def write(self, data: blobs.Buffer, /) -> int: ...


class Incoming:
    def __init__(
        self,
        sink: Sink,
        algorithm: str = digests.SHA256,
        watch: Callable[[blobs.Buffer], object] | None = None,
    ) -> None:
        """`algorithm`: the digest `finish` gives (`digests.hasher`). `watch`: also given each
        chunk, in order, in the worker thread that hashes and writes that chunk, once the chunk
        before is done with (the server's NaN/Inf scan of an upload,
        `quorum.wire.finite_scan`)."""
        self.received = 0
        self._sink = sink
        self._hash = digests.hasher(algorithm)
        self._watch = watch
        self._taking: asyncio.Future[None] | None = None

    async def add(self, chunk: blobs.Buffer) -> None:
        """Appends the next chunk (which must not change until it is written)."""
        self.received += memoryview(chunk).nbytes
        # In order: the previous chunk is written before this one starts (hashlib and file
        # writes let go of the GIL, so this runs beside the next chunk's arrival).
        await self._written()
        self._taking = asyncio.ensure_future(asyncio.to_thread(self._take, chunk))

    def _take(self, chunk: blobs.Buffer) -> None:
        self._hash.update(chunk)
        if self._watch is not None:
            self._watch(chunk)
        # A file may take part of a write without an error (its disk filling up): the rest is
        # written again, and fails, rather than leave the spool short of what was hashed.
        view = memoryview(chunk)
        while view:
            written = self._sink.write(view)
            if not written:
                raise OSError(errno.EIO, "the sink took none of a write")
            view = view[written:]

    async def finish(self) -> str:
        """Waits for the last chunk to be written; the blob's digest (hex). Also what a
        receiver cancelled meanwhile awaits before it lets the sink go."""
        await self._written()
        self._taking = None
        return self._hash.hexdigest()

    async def _written(self) -> None:
        # Shielded: a cancelled receiver (its sender hung up) cannot stop the thread, and the
        # write must stay awaitable until it is over, not end cancelled while it still runs.
        if self._taking is not None:
            await asyncio.shield(self._taking)
