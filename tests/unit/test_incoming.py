"""quorum.wire.incoming: a blob taken chunk by chunk is written whole to its sink, in order, with
its SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.wire.incoming import Incoming, Sink


async def _take(chunks: list[bytes], sink: Sink) -> str:
    blob = Incoming(sink)
    for chunk in chunks:
        await blob.add(chunk)
    assert blob.received == sum(map(len, chunks))
    return await blob.finish()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=12), st.booleans())
def test_chunks_make_the_blob_and_its_digest(chunks: list[bytes], to_file: bool) -> None:
    whole = b"".join(chunks)
    if to_file:
        with tempfile.TemporaryFile(buffering=0) as file:
            digest = asyncio.run(_take(chunks, file))
            file.seek(0)
            assert file.read() == whole
    else:
        buffer = io.BytesIO()
        digest = asyncio.run(_take(chunks, buffer))
        assert buffer.getvalue() == whole
    assert digest == hashlib.sha256(whole).hexdigest()


class _Full(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise OSError(28, "No space left on device")


def test_a_failed_write_surfaces_at_the_next_chunk_or_the_end() -> None:
    async def take() -> None:
        blob = Incoming(_Full())
        await blob.add(b"a")
        await blob.finish()

    with pytest.raises(OSError, match="No space"):
        asyncio.run(take())
