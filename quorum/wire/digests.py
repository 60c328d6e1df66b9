"""The digests a blob in transit is checked against.

A blob's name is the SHA-256 of its bytes (a model's digest in the store, a site's cache, a
checkpoint, a gossip parcel's address). A transfer only needs to show that the bytes arrived as
they were sent, and BLAKE3 does that at 4-5 GB/s on one core where SHA-256 does 1 GB/s: a 1 GB
round hashed each update at the site and again at the server, and each download at its site,
with SHA-256 alone. So uploads carry the digest their server asks for (`Welcome.upload_digests`,
`UploadHeader.digest_algorithm`) and offers carry the model's BLAKE3 beside its name
(`TaskOffer.model_blake3`); a peer that knows neither field keeps to SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

import blake3

from quorum.errors import BlobError

SHA256 = "sha256"
BLAKE3 = "blake3"
UPLOAD_DIGESTS = (BLAKE3, SHA256)
"""What a server checks uploads against, the one it would rather have first."""
ACCEPTED = frozenset({"", *UPLOAD_DIGESTS})
"""The algorithms an upload's header may name ("": a site from before BLAKE3, SHA-256)."""


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def hasher(algorithm: str) -> Hasher:
    """A new hash of `algorithm` ("" is SHA-256, the digest of peers that name none)."""
    if algorithm in ("", SHA256):
        return hashlib.sha256()
    if algorithm == BLAKE3:
        # One thread: uploads and downloads are hashed side by side, a core each at most.
        return blake3.blake3()
    raise BlobError(f"unknown digest algorithm {algorithm!r} (known: {', '.join(UPLOAD_DIGESTS)})")


def choose(offered: Iterable[str]) -> str:
    """The upload digest to send a server that takes `offered` (its preference first): the
    first this site knows, else SHA-256, which every server takes."""
    return next((name for name in offered if name in UPLOAD_DIGESTS), SHA256)
