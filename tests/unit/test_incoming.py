"""quorum.wire.incoming: a blob taken chunk by chunk is the blob, with its SHA-256."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.errors import BlobError
from quorum.wire.incoming import Incoming


async def _take(chunks: list[bytes], size: int) -> tuple[bytes, str]:
    blob = Incoming(size)
    for chunk in chunks:
        await blob.add(chunk)
    return await blob.finish()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=12))
def test_chunks_make_the_blob_and_its_digest(chunks: list[bytes]) -> None:
    whole = b"".join(chunks)
    data, digest = asyncio.run(_take(chunks, len(whole)))
    assert data == whole and isinstance(data, bytes)
    assert digest == hashlib.sha256(whole).hexdigest()


def test_a_chunk_past_the_announced_size_is_refused() -> None:
    with pytest.raises(BlobError, match="past the blob's announced 4 bytes"):
        asyncio.run(_take([b"abc", b"de"], 4))


def test_a_blob_that_stops_short_is_refused() -> None:
    with pytest.raises(BlobError, match="3 bytes of the announced 4"):
        asyncio.run(_take([b"abc"], 4))
