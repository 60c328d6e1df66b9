"""The messages of one SecAgg+ round, as plain frozen values.

The integration carries them over the wire; this package only reads their fields. Every
signature, key derivation and associated-data block binds `RoundContext.encode()`, so nothing
made for one run, round, attempt or model can be replayed in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quorum.errors import SecAggError
from quorum.privacy.secagg._encoding import CONTEXT_LABEL, frame, uint

MASKED_TENSOR = "masked"
"""The one tensor of a masked upload: a uint32 vector of `Setup.vector_length` elements."""

ShareKind = Literal["seed", "key"]


@dataclass(frozen=True)
class RoundContext:
    run_id: str
    round: int
    attempt: int
    model_digest: str

    def __post_init__(self) -> None:
        if self.round < 0 or self.attempt < 0:
            raise SecAggError(
                f"round ({self.round}) and attempt ({self.attempt}) must be non-negative"
            )

    def encode(self) -> bytes:
        """Length-prefixed fields, so no two contexts give the same bytes."""
        return frame(
            CONTEXT_LABEL,
            self.run_id.encode(),
            uint(self.round),
            uint(self.attempt),
            self.model_digest.encode(),
        )


@dataclass(frozen=True)
class Peer:
    """A neighbour as the server introduces it; `identity_key` is its raw Ed25519 public key."""

    index: int
    name: str
    identity_key: bytes


@dataclass(frozen=True)
class Setup:
    """What a site is told when a round starts; `peers` are its neighbours, never itself."""

    context: RoundContext
    index: int
    threshold: int
    vector_length: int
    peers: tuple[Peer, ...]


@dataclass(frozen=True)
class AdvertisedKeys:
    index: int
    cipher_public: bytes
    mask_public: bytes
    signature: bytes


@dataclass(frozen=True)
class EncryptedShare:
    sender: int
    receiver: int
    ciphertext: bytes


@dataclass(frozen=True)
class RevealedShare:
    """A share of site `owner`'s self-mask seed ("seed") or of its mask private key ("key")."""

    owner: int
    kind: ShareKind
    share: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: frozenset[int]
    dropped: frozenset[int]
