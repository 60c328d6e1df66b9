"""The primitives of SecAgg+: X25519 key agreement, AES-256-GCM for shares, an AES-CTR mask PRG.

The PRG is AES-256-CTR under a 32-byte seed, a cryptographic generator: a statistical one with
a short seed would let the server search for the masks. It adds the keystream into a caller's
vector through one reusable scratch buffer per thread, so masking a large model costs memory of
one MiB per thread however long the vector is.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from quorum.errors import SecAggError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_CHUNK_BYTES = 1 << 20  # 1 MiB of keystream per step: amortises the calls, stays in cache
_ZEROS = memoryview(bytes(_CHUNK_BYTES))
_ZERO_COUNTER = bytes(16)
_KEYSTREAM = np.dtype("<u4")
_scratch = threading.local()


def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes_raw()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def load_private(raw: bytes) -> X25519PrivateKey:
    if len(raw) != KEY_BYTES:
        raise SecAggError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(raw)}")
    try:
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError as exc:
        raise SecAggError(f"invalid X25519 private key: {exc}") from None


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def agree(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key both ends derive alike; `info` ties it to one purpose and one round."""
    if len(peer_public) != KEY_BYTES:
        raise SecAggError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # cryptography refuses low-order points, whose shared secret is all zeros and so secret
        # from nobody.
        raise SecAggError("the peer's X25519 public key is a low-order point") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise SecAggError(f"an AES-256 key is {KEY_BYTES} bytes, got {len(key)}")


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    _check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    _check_key(key)
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError(
            f"authentication failed: a ciphertext of {len(ciphertext)} bytes is shorter than "
            f"its nonce and tag ({NONCE_BYTES + TAG_BYTES} bytes)"
        )
    nonce = ciphertext[:NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, ciphertext[NONCE_BYTES:], associated)
    except InvalidTag:
        raise SecAggError(
            "authentication failed: the ciphertext was altered, or was made under another key "
            "or for another round or pair of sites"
        ) from None


def _scratch_buffer() -> bytearray:
    buffer: bytearray | None = getattr(_scratch, "buffer", None)
    if buffer is None:
        # update_into asks for one cipher block of room beyond the input.
        buffer = bytearray(_CHUNK_BYTES + 16)
        _scratch.buffer = buffer
    return buffer


def add_prg(out: npt.NDArray[np.uint32], seed: bytes, subtract: bool = False) -> None:
    """Adds (or subtracts) the keystream of `seed` into `out` in place, modulo 2^32."""
    if len(seed) != KEY_BYTES:
        raise SecAggError(f"a mask seed is {KEY_BYTES} bytes, got {len(seed)}")
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.uint32
        or out.ndim != 1
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise SecAggError("masks apply to a writeable, contiguous 1-D uint32 array")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    buffer = _scratch_buffer()
    combine = np.subtract if subtract else np.add
    step = _CHUNK_BYTES // 4
    for start in range(0, out.shape[0], step):
        part = out[start : start + step]
        nbytes = part.shape[0] * 4
        encryptor.update_into(_ZEROS[:nbytes], buffer)
        keystream = np.frombuffer(buffer, dtype=_KEYSTREAM, count=part.shape[0])
        combine(part, keystream, out=part)


def prg(seed: bytes, length: int) -> npt.NDArray[np.uint32]:
    """The first `length` uint32 words of the keystream of `seed`."""
    if length < 0:
        raise SecAggError(f"a mask length must be non-negative, got {length}")
    out = np.zeros(length, dtype=np.uint32)
    add_prg(out, seed)
    return out
