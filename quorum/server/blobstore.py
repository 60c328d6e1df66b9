"""The blobs the server currently serves (global models), by digest.

A global model is serialised once and the same bytes go to every site. Only the newest two are
kept: a round's fit model and the new model its sites evaluate.
"""

from __future__ import annotations

from collections import OrderedDict

from quorum.wire import blobs


class BlobStore:
    def __init__(self, keep: int = 2) -> None:
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self.keep = keep
        """How many blobs are served at once (async runs keep one per site in flight)."""

    def put(self, data: bytes) -> str:
        key = blobs.digest(data)
        self._blobs[key] = data
        self._blobs.move_to_end(key)
        while len(self._blobs) > self.keep:
            self._blobs.popitem(last=False)
        return key

    def get(self, key: str) -> bytes | None:
        return self._blobs.get(key)
