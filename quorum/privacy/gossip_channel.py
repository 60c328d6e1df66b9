"""End-to-end encryption of a model between two gossip neighbours (DESIGN section 5).

Gossip models travel through the server's relay, which must learn nothing from them and must
not be able to alter, swap or replay them unnoticed. Each round every site draws a fresh X25519
key and signs it with its long-term Ed25519 identity over (run, round, attempt, index, key), so
the server cannot substitute its own key; two neighbours derive one AES-256 key per pair and
round with X25519 + HKDF (the info binds run, round, attempt and the pair); each model is sealed
with AES-GCM whose associated data binds run, round, attempt, sender and receiver, so a
ciphertext cannot be replayed into another round, reflected back to its sender or redirected to
another site. No I/O here: the site agent and the tests call these as plain functions.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from quorum.errors import GossipError, SecAggError
from quorum.privacy.secagg import crypto

KEY_CONTEXT = b"quorum-gossip-key-v1"
PAIR_CONTEXT = b"quorum-gossip-pair-v1"
PARCEL_CONTEXT = b"quorum-gossip-parcel-v1"
OVERHEAD_BYTES = crypto.NONCE_BYTES + crypto.TAG_BYTES
"""What sealing adds to a model: the nonce and the tag."""


def _fields(*parts: bytes) -> bytes:
    """Each field length-prefixed, so no two tuples of fields give the same bytes."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _round(run_id: str, round_no: int, attempt: int) -> tuple[bytes, bytes, bytes]:
    return run_id.encode(), round_no.to_bytes(4, "big"), attempt.to_bytes(4, "big")


def key_transcript(
    run_id: str, round_no: int, attempt: int, index: int, public_key: bytes
) -> bytes:
    return _fields(
        KEY_CONTEXT, *_round(run_id, round_no, attempt), index.to_bytes(4, "big"), public_key
    )


def generate_key() -> tuple[X25519PrivateKey, bytes]:
    """A fresh round key: (private, raw public)."""
    return crypto.generate_keypair()


def sign_key(
    identity: Ed25519PrivateKey,
    run_id: str,
    round_no: int,
    attempt: int,
    index: int,
    public_key: bytes,
) -> bytes:
    return identity.sign(key_transcript(run_id, round_no, attempt, index, public_key))


def verify_key(
    identity_key: bytes,
    run_id: str,
    round_no: int,
    attempt: int,
    index: int,
    public_key: bytes,
    signature: bytes,
) -> None:
    """Raises GossipError(`bad_key_signature`) unless the registered identity signed this key
    for this round, attempt and index."""
    try:
        Ed25519PublicKey.from_public_bytes(identity_key).verify(
            signature, key_transcript(run_id, round_no, attempt, index, public_key)
        )
    except (InvalidSignature, ValueError):
        raise GossipError(
            "bad_key_signature",
            f"site {index}'s round key is not signed by its registered identity key",
        ) from None


def pair_key(
    private: X25519PrivateKey,
    peer_public: bytes,
    run_id: str,
    round_no: int,
    attempt: int,
    a: int,
    b: int,
) -> bytes:
    """The AES-256 key sites `a` and `b` share this round (both derive the same one)."""
    low, high = sorted((a, b))
    info = _fields(
        PAIR_CONTEXT,
        *_round(run_id, round_no, attempt),
        low.to_bytes(4, "big"),
        high.to_bytes(4, "big"),
    )
    try:
        return crypto.agree(private, peer_public, info)
    except SecAggError as exc:
        raise GossipError("bad_key", str(exc)) from None


def associated_data(run_id: str, round_no: int, attempt: int, sender: int, receiver: int) -> bytes:
    return _fields(
        PARCEL_CONTEXT,
        *_round(run_id, round_no, attempt),
        sender.to_bytes(4, "big"),
        receiver.to_bytes(4, "big"),
    )


def seal(key: bytes, model: bytes, associated: bytes) -> bytes:
    return crypto.encrypt(key, model, associated)


def open_parcel(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """The model, or GossipError(`relay_tampered`) when the ciphertext was altered, truncated,
    or made for another round, attempt, direction or pair."""
    try:
        return crypto.decrypt(key, ciphertext, associated)
    except SecAggError as exc:
        raise GossipError("relay_tampered", str(exc)) from None
