"""Byte encodings and domain-separation labels shared by the site and server sides.

Each label names one use of a key or transcript, so bytes produced for one purpose (a signature,
a share-encryption key, a pairwise mask seed) can never be accepted for another.
"""

from __future__ import annotations

CONTEXT_LABEL = b"quorum-secagg-v1"
KEYS_LABEL = b"quorum-secagg-keys-v1"
SHARE_KEY_LABEL = b"quorum-secagg-share-key-v1"
SHARE_AD_LABEL = b"quorum-secagg-share-v1"
MASK_KEY_LABEL = b"quorum-secagg-mask-key-v1"


def frame(*fields: bytes) -> bytes:
    """Each field length-prefixed, so no two field lists give the same bytes."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def uint(value: int) -> bytes:
    return value.to_bytes(8, "big")


def keys_transcript(context: bytes, index: int, cipher_public: bytes, mask_public: bytes) -> bytes:
    """What a site signs for its round keys: the context pins the run, round and model."""
    return frame(KEYS_LABEL, context, uint(index), cipher_public, mask_public)


def share_key_info(context: bytes) -> bytes:
    return SHARE_KEY_LABEL + context


def mask_key_info(context: bytes) -> bytes:
    return MASK_KEY_LABEL + context


def share_associated(context: bytes, sender: int, receiver: int) -> bytes:
    """Binds a share ciphertext to its direction, so it cannot be reflected or redirected."""
    return frame(SHARE_AD_LABEL, context, uint(sender), uint(receiver))
