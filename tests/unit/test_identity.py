"""Unit tests of quorum.identity: Ed25519 site keys and the signed join transcript."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quorum import identity
from quorum.errors import AuthError, ConfigError

NONCE = bytes(range(32))


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _pem_public(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- key files ---------------------------------------------------------------------------------


def test_keygen_writes_a_private_file_0600_and_a_public_file_beside_it(
    tmp_path: pathlib.Path,
) -> None:
    key = identity.generate()
    private_path = tmp_path / "keys" / "site-a.key"
    public_path = identity.write_keypair(key, private_path)
    assert public_path == tmp_path / "keys" / "site-a.pub"
    assert _mode(private_path) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert b"PRIVATE" not in public_path.read_bytes()


def test_keygen_without_a_suffix(tmp_path: pathlib.Path) -> None:
    public_path = identity.write_keypair(identity.generate(), tmp_path / "site")
    assert public_path == tmp_path / "site.pub"
    assert _mode(tmp_path / "site") == 0o600


def test_private_key_is_0600_whatever_the_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        identity.write_keypair(identity.generate(), tmp_path / "site.key")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "site.key") == 0o600


def test_overwriting_a_key_file_makes_it_0600(tmp_path: pathlib.Path) -> None:
    private_path = tmp_path / "site.key"
    private_path.write_bytes(b"old")
    private_path.chmod(0o644)
    identity.write_keypair(identity.generate(), private_path)
    assert _mode(private_path) == 0o600


def test_load_private_and_load_public_round_trip(tmp_path: pathlib.Path) -> None:
    key = identity.generate()
    public_path = identity.write_keypair(key, tmp_path / "site.key")
    loaded = identity.load_private(tmp_path / "site.key")
    assert identity.public_bytes(loaded) == identity.public_bytes(key)
    raw = identity.load_public(public_path)
    assert raw == identity.public_bytes(key)
    assert len(raw) == 32
    assert identity.public_bytes(key.public_key()) == raw
    # the loaded key signs what the public file verifies
    identity.verify_join(raw, "srv", NONCE, identity.sign_join(loaded, "srv", NONCE))


def test_load_private_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read site key .*absent\.key"):
        identity.load_private(tmp_path / "absent.key")
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match=r"junk\.key is not a PEM private key"):
        identity.load_private(junk)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match=r"ec\.key is not an Ed25519 key"):
        identity.load_private(ec_key)


def test_load_public_of_a_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read public key .*absent\.pub"):
        identity.load_public(tmp_path / "absent.pub")


def test_load_public_names_the_file_it_refuses(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match=r"bad\.pub is not a PEM public key"):
        identity.load_public(path)


# --- parse_public ------------------------------------------------------------------------------


def test_parse_public_accepts_pem_and_32_raw_bytes() -> None:
    key = identity.generate()
    raw = identity.public_bytes(key)
    assert identity.parse_public(_pem_public(key)) == raw
    assert identity.parse_public(_pem_public(key) + b"\n") == raw
    assert identity.parse_public(raw) == raw


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"is not a PEM public key"),
        (bytes(31), r"is not a PEM public key"),
        (bytes(33), r"is not a PEM public key"),
        (bytes(64), r"is not a PEM public key"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB site", r"is not a PEM public key"),
        (_pem_public(ec.generate_private_key(ec.SECP256R1())), r"is not an Ed25519 public key"),
        (_pem_public(x25519.X25519PrivateKey.generate()), r"is not an Ed25519 public key"),
    ],
    ids=["empty", "31-bytes", "33-bytes", "64-bytes", "openssh", "ec-p256", "x25519"],
)
def test_parse_public_refuses_everything_else(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^public_key {message}"):
        identity.parse_public(data, "public_key")


def test_parse_public_refuses_a_private_key_pem() -> None:
    pem = identity.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigError):
        identity.parse_public(pem)


# --- join signatures ---------------------------------------------------------------------------


def test_sign_join_verifies_with_the_right_key() -> None:
    key = identity.generate()
    signature = identity.sign_join(key, "quorum-hq", NONCE)
    assert len(signature) == 64
    identity.verify_join(identity.public_bytes(key), "quorum-hq", NONCE, signature)


def test_verify_join_refuses_another_key() -> None:
    key, other = identity.generate(), identity.generate()
    signature = identity.sign_join(key, "quorum-hq", NONCE)
    with pytest.raises(AuthError, match="does not match the registered public key"):
        identity.verify_join(identity.public_bytes(other), "quorum-hq", NONCE, signature)


def test_verify_join_refuses_a_signature_by_another_key_over_its_own_transcript() -> None:
    """A site cannot prove a registered key it does not hold by signing with its own."""
    victim, attacker = identity.generate(), identity.generate()
    forged = attacker.sign(identity.transcript("srv", NONCE, identity.public_bytes(victim)))
    with pytest.raises(AuthError):
        identity.verify_join(identity.public_bytes(victim), "srv", NONCE, forged)


def test_verify_join_refuses_another_nonce() -> None:
    key = identity.generate()
    signature = identity.sign_join(key, "quorum-hq", NONCE)
    with pytest.raises(AuthError):
        identity.verify_join(identity.public_bytes(key), "quorum-hq", NONCE[::-1], signature)
    with pytest.raises(AuthError):
        identity.verify_join(identity.public_bytes(key), "quorum-hq", NONCE[:-1], signature)


def test_verify_join_refuses_another_server_id() -> None:
    key = identity.generate()
    signature = identity.sign_join(key, "quorum-hq", NONCE)
    for server_id in ("quorum-h", "quorum-hq2", "other", ""):
        with pytest.raises(AuthError):
            identity.verify_join(identity.public_bytes(key), server_id, NONCE, signature)


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_verify_join_refuses_a_tampered_signature(index: int) -> None:
    key = identity.generate()
    signature = bytearray(identity.sign_join(key, "quorum-hq", NONCE))
    signature[index] ^= 0x01
    with pytest.raises(AuthError):
        identity.verify_join(identity.public_bytes(key), "quorum-hq", NONCE, bytes(signature))


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [(bytes(31), None), (b"", None), (None, b""), (None, b"\0" * 63), (None, b"\0" * 65)],
    ids=["short-key", "empty-key", "empty-sig", "short-sig", "long-sig"],
)
def test_verify_join_refuses_malformed_inputs_with_auth_error(
    public_key: bytes | None, signature: bytes | None
) -> None:
    key = identity.generate()
    good_sig = identity.sign_join(key, "s", NONCE)
    with pytest.raises(AuthError):
        identity.verify_join(
            identity.public_bytes(key) if public_key is None else public_key,
            "s",
            NONCE,
            good_sig if signature is None else signature,
        )


def test_signatures_differ_per_key_and_are_deterministic() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    assert identity.sign_join(key, "s", NONCE) == identity.sign_join(key, "s", NONCE)
    assert identity.sign_join(key, "s", NONCE) != identity.sign_join(
        identity.generate(), "s", NONCE
    )


def test_transcript_is_unambiguous() -> None:
    key = identity.generate()
    signature = identity.sign_join(key, "a", b"b\n" + NONCE)
    with pytest.raises(AuthError):
        identity.verify_join(identity.public_bytes(key), "a\nb", NONCE, signature)
