"""Site identities: Ed25519 key pairs, and the join transcript a site signs to prove its key.

The transcript binds the server's random nonce, the server's id and the site's public key, so a
signature cannot be replayed to another server or for another key.
"""

from __future__ import annotations

import os
import pathlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quorum.errors import AuthError, ConfigError

JOIN_CONTEXT = b"quorum-join-v1"


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of the private key (a simulation host's spec carries its sites' keys)."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def write_keypair(key: Ed25519PrivateKey, private_path: pathlib.Path) -> pathlib.Path:
    """Writes the private key (PEM, mode 0600) and the public key beside it as NAME.pub."""
    public_path = private_path.with_suffix(".pub")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public_path


def load_private(path: pathlib.Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read site key {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def parse_public(data: bytes, source: str = "public key") -> bytes:
    """Accepts a PEM public key or 32 raw bytes; returns the raw 32 bytes."""
    if len(data) == 32:
        return data
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{source} is not an Ed25519 public key")
    return public_bytes(key)


def load_public(path: pathlib.Path) -> bytes:
    try:
        return parse_public(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from None


def transcript(server_id: str, nonce: bytes, public_key: bytes) -> bytes:
    """Each field length-prefixed, so no two (server_id, nonce, key) give the same bytes."""
    fields = [JOIN_CONTEXT, server_id.encode(), nonce, public_key]
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def sign_join(key: Ed25519PrivateKey, server_id: str, nonce: bytes) -> bytes:
    return key.sign(transcript(server_id, nonce, public_bytes(key)))


def verify_join(public_key: bytes, server_id: str, nonce: bytes, signature: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, transcript(server_id, nonce, public_key)
        )
    except (InvalidSignature, ValueError):
        raise AuthError("the join signature does not match the registered public key") from None
