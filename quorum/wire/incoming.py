"""A blob arriving in chunks (an upload at the server, a download at a site): written in place
into one buffer of its announced size and hashed as it arrives.

The buffer is allocated once (never grown and copied); each chunk is hashed in a worker thread
while the next one arrives, so the digest is ready with the last byte and checking it is no
second pass over the blob. The caller checks, with its own words, that each chunk fits and that
the blob is whole before `finish`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io

from quorum.wire import blobs


class Incoming:
    """`writable`: the blob is handed over as a bytearray the receiver may take over (the
    server's SecAgg+ sum is made in the first masked upload's own buffer); otherwise as bytes,
    made without a copy, whose tensors are read-only views (a site's download is shared with
    its cache)."""

    def __init__(self, size: int, *, writable: bool = False) -> None:
        self.size = size
        self.received = 0
        self._buffer: bytearray | io.BytesIO = (
            bytearray(size) if writable else blobs.sized_buffer(size)
        )
        self._sha = hashlib.sha256()
        self._hashing: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes) -> None:
        """Appends the next chunk."""
        if isinstance(self._buffer, bytearray):
            self._buffer[self.received : self.received + len(chunk)] = chunk
        else:
            self._buffer.write(chunk)
        self.received += len(chunk)
        # In order: the previous chunk is hashed before this one starts (hashlib lets go of
        # the GIL, so hashing runs beside the next chunk's arrival on another core).
        if self._hashing is not None:
            await self._hashing
        self._hashing = asyncio.ensure_future(asyncio.to_thread(self._sha.update, chunk))

    async def finish(self) -> tuple[bytes | bytearray, str]:
        """The whole blob and its SHA-256 (hex)."""
        if self._hashing is not None:
            await self._hashing
            self._hashing = None
        data = self._buffer if isinstance(self._buffer, bytearray) else self._buffer.getvalue()
        return data, self._sha.hexdigest()
