"""quorum.wire.incoming: a blob taken chunk by chunk is the blob, with its SHA-256."""

from __future__ import annotations

import asyncio
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.wire.incoming import Incoming


async def _take(chunks: list[bytes], writable: bool) -> tuple[bytes | bytearray, str]:
    blob = Incoming(sum(map(len, chunks)), writable=writable)
    for chunk in chunks:
        await blob.add(chunk)
    return await blob.finish()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=12), st.booleans())
def test_chunks_make_the_blob_and_its_digest(chunks: list[bytes], writable: bool) -> None:
    whole = b"".join(chunks)
    data, digest = asyncio.run(_take(chunks, writable))
    assert data == whole
    # An upload may be taken over (SecAgg+'s sum); a download is shared read-only.
    assert isinstance(data, bytearray if writable else bytes)
    assert digest == hashlib.sha256(whole).hexdigest()
