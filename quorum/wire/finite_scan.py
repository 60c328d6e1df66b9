"""Whether a blob's float values are all finite, found chunk by chunk as the blob arrives.

An upload's NaN/Inf check read its 1 GB spool back once more before the fold read it again:
a second pass over the page cache, and the last upload's check stood between its last byte and
its fold. Scanned as each chunk is hashed and written (`quorum.wire.incoming`), the values are
checked while the chunk is in the CPU's cache, and the check after the last byte is a flag.

Chunk boundaries fall anywhere: inside the header, or inside a value (a float16 tensor of an
odd length puts the next float32 tensor's values off their 4-byte grid). The header is
gathered until whole, and a value cut in two is carried to the next chunk.
"""

from __future__ import annotations

import numpy as np

from quorum.errors import BlobError
from quorum.wire import blobs

HEAD_BYTES = 4 * 1024 * 1024
"""The longest header gathered (about 40,000 tensors' entries). A longer one, which a blob may
declare up to `blobs.MAX_HEADER_BYTES`, gets no verdict: its upload's checks read the spool, and
a site that sends a long header slowly holds no more of the server's memory than this."""


class FiniteScan:
    """Feed it a blob of `size` bytes in order (`add`); `verdict` then says whether every value
    of its float tensors is finite, or None where its header could not be read or was longer
    than HEAD_BYTES (the blob's own checks then read it, and say what is wrong)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen = 0
        self._head = bytearray()
        self._spans: list[tuple[int, int, np.dtype]] | None = None
        """The float tensors' byte ranges in the blob, in order; None until the header is
        whole."""
        self._next = 0
        self._carry = bytearray()
        self._finite = True
        self._unreadable = False

    def add(self, chunk: blobs.Buffer) -> None:
        view = memoryview(chunk).cast("B")
        start = self._seen
        self._seen += view.nbytes
        if self._unreadable or not self._finite:
            return
        if self._spans is None:
            taken = self._gather_head(view)
            if self._spans is None:
                return
            start, view = start + taken, view[taken:]
        self._scan(start, view)

    def verdict(self) -> bool | None:
        """True if all float values were finite, False if one was not, None if the header
        could not be read or the blob has not all arrived."""
        if self._unreadable or self._spans is None:
            return None
        if not self._finite:
            return False
        return True if self._seen == self._size else None

    def _gather_head(self, view: memoryview) -> int:
        """Takes what of `view` the header still needs; how many bytes it took."""
        taken = 0
        try:
            while len(self._head) < (need := 8 if len(self._head) < 8 else self._head_bytes()):
                more = min(view.nbytes - taken, need - len(self._head))
                if not more:
                    return taken
                self._head += view[taken : taken + more]
                taken += more
            layout = blobs.layout_of(self._head, self._size)
        except BlobError:
            self._unreadable = True
            return taken
        self._head = bytearray()
        self._spans = [
            (
                layout.data_offset + t.start,
                layout.data_offset + t.end,
                blobs.dtype_of(t.dtype),
            )
            for t in layout.tensors
            if t.dtype in blobs.FLOAT_DTYPES and t.end > t.start
        ]
        return taken

    def _head_bytes(self) -> int:
        length = 8 + blobs.header_length(self._head[:8], self._size)
        if length > HEAD_BYTES:
            raise BlobError(f"a header of {length} bytes is not gathered")
        return length

    def _scan(self, start: int, view: memoryview) -> None:
        end = start + view.nbytes
        assert self._spans is not None  # scanned once the header is read
        while self._next < len(self._spans):
            first, last, dtype = self._spans[self._next]
            low, high = max(start, first), min(end, last)
            if low >= end:
                return
            if low < high:
                piece = view[low - start : high - start]
                if self._carry:
                    taken = min(dtype.itemsize - len(self._carry), piece.nbytes)
                    self._carry += piece[:taken]
                    piece = piece[taken:]
                    if len(self._carry) == dtype.itemsize:
                        self._check(self._carry, dtype)
                        self._carry = bytearray()
                whole = piece.nbytes - piece.nbytes % dtype.itemsize
                self._check(piece[:whole], dtype)
                self._carry += piece[whole:]
                if not self._finite:
                    return
            if high < last:
                return
            self._next += 1

    def _check(self, data: blobs.Buffer, dtype: np.dtype) -> None:
        if self._finite and len(data):
            self._finite = bool(np.isfinite(np.frombuffer(data, dtype)).all())
