"""How many uploads the server receives at once, by count and by bytes.

An upload is spooled to a file as it arrives and must pass its checks before any of it enters
the sum (a bad update cannot be taken back out of a float sum); the checks and the fold then
read it back a block at a time. Uploads being received cost disk and the kernel's page cache,
not the server's own memory, but a count alone cannot bound them across model sizes: two uploads
of a 1 GB model are 2 GB. The byte budget lets uploads in while their declared sizes fit; one
upload is always let in, however large, so a model bigger than the budget is received one at a
time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class UploadBudget:
    def __init__(self, max_uploads: int, max_bytes: int) -> None:
        if max_uploads < 1 or max_bytes < 1:
            raise ValueError("an upload budget lets in at least one upload and one byte")
        self.max_uploads = max_uploads
        self.max_bytes = max_bytes
        self._uploads = 0
        self._bytes = 0
        self._changed = asyncio.Condition()

    @property
    def held(self) -> tuple[int, int]:
        """(uploads, bytes) held now."""
        return self._uploads, self._bytes

    def _fits(self, nbytes: int) -> bool:
        if self._uploads == 0:
            return True
        return self._uploads < self.max_uploads and self._bytes + nbytes <= self.max_bytes

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Waits until an upload of `nbytes` fits, and holds its share until the block ends."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(nbytes))
            self._uploads += 1
            self._bytes += nbytes
        try:
            yield
        finally:
            async with self._changed:
                self._uploads -= 1
                self._bytes -= nbytes
                self._changed.notify_all()
