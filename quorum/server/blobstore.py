"""The blobs the server currently serves (global models), by digest.

A global model is written once, to its file, and the same bytes go to every site: the store holds
open files (`BlobFile`), so a download is read from the kernel's page cache and never costs the
server a copy of the model in memory. Only the newest `keep` are served: a round's fit model and
the new model its sites evaluate (an async run keeps the versions its sites may still fetch).
"""

from __future__ import annotations

from collections import OrderedDict

from quorum.wire.blobfiles import BlobFile


class BlobStore:
    def __init__(self, keep: int = 2) -> None:
        self._blobs: OrderedDict[str, BlobFile] = OrderedDict()
        self.keep = keep
        """How many blobs are served at once (async runs keep one per site in flight)."""

    def put(self, blob: BlobFile) -> str:
        key = blob.digest
        self._blobs[key] = blob
        self._blobs.move_to_end(key)
        while len(self._blobs) > self.keep:
            self._blobs.popitem(last=False)
        return key

    def get(self, key: str) -> BlobFile | None:
        return self._blobs.get(key)
