"""A blob arriving in chunks (an upload at the server, a download at a site): written in place
into one buffer of its announced size and hashed as it arrives.

The buffer is allocated once (never grown and copied) and handed over as bytes without a copy;
each chunk is hashed in a worker thread while the next one arrives, so the digest is ready with
the last byte and checking it is no second pass over the blob.
"""

from __future__ import annotations

import asyncio
import hashlib

from quorum.errors import BlobError
from quorum.wire import blobs


class Incoming:
    def __init__(self, size: int) -> None:
        self.size = size
        self.received = 0
        self._buffer = blobs.sized_buffer(size)
        self._sha = hashlib.sha256()
        self._hashing: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes) -> None:
        """Appends the next chunk; the caller checks first that it fits, with its own words."""
        if self.received + len(chunk) > self.size:
            raise BlobError(f"a chunk past the blob's announced {self.size} bytes")
        self._buffer.write(chunk)
        self.received += len(chunk)
        # In order: the previous chunk is hashed before this one starts (hashlib lets go of
        # the GIL, so hashing runs beside the next chunk's arrival on another core).
        if self._hashing is not None:
            await self._hashing
        self._hashing = asyncio.ensure_future(asyncio.to_thread(self._sha.update, chunk))

    async def finish(self) -> tuple[bytes, str]:
        """The whole blob and its SHA-256 (hex); the caller has checked that it is whole."""
        if self._hashing is not None:
            await self._hashing
            self._hashing = None
        if self.received != self.size:
            raise BlobError(f"{self.received} bytes of the announced {self.size} arrived")
        return self._buffer.getvalue(), self._sha.hexdigest()
