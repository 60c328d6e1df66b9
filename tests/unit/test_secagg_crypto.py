"""The SecAgg primitives: X25519 + HKDF agreement, AES-GCM share encryption, the AES-CTR PRG."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.errors import SecAggError
from quorum.privacy.secagg import crypto
from quorum.privacy.secagg.crypto import (
    KEY_BYTES,
    add_prg,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    load_private,
    prg,
    private_bytes,
)

KEY = bytes(range(32))
AD = b"associated"


def _keystream(seed: bytes, length: int) -> np.ndarray:
    raw = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(4 * length))
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


# --- keys and agreement ------------------------------------------------------------------------


def test_agreement_is_symmetric_and_depends_on_info() -> None:
    a, a_pub = generate_keypair()
    b, b_pub = generate_keypair()
    assert len(a_pub) == KEY_BYTES
    k_ab = agree(a, b_pub, b"info")
    assert k_ab == agree(b, a_pub, b"info")
    assert len(k_ab) == KEY_BYTES
    assert agree(a, b_pub, b"other") != k_ab
    _, c_pub = generate_keypair()
    assert agree(a, c_pub, b"info") != k_ab


def test_private_key_round_trips_through_raw_bytes() -> None:
    key, public = generate_keypair()
    raw = private_bytes(key)
    assert len(raw) == KEY_BYTES
    assert crypto.public_bytes(load_private(raw)) == public
    with pytest.raises(SecAggError, match="32 bytes"):
        load_private(raw[:-1])


def test_agree_refuses_malformed_and_low_order_peer_keys() -> None:
    key, _ = generate_keypair()
    with pytest.raises(SecAggError, match="32 bytes"):
        agree(key, b"\x01" * 31, b"info")
    for low_order in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(SecAggError, match="low-order"):
            agree(key, low_order, b"info")


# --- AES-GCM ------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=64))
def test_encrypt_decrypt_round_trip(plaintext: bytes, associated: bytes) -> None:
    ciphertext = encrypt(KEY, plaintext, associated)
    assert len(ciphertext) == len(plaintext) + crypto.NONCE_BYTES + crypto.TAG_BYTES
    assert decrypt(KEY, ciphertext, associated) == plaintext


def test_each_encryption_uses_a_fresh_nonce() -> None:
    assert encrypt(KEY, b"same", AD) != encrypt(KEY, b"same", AD)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_flipped_bit_fails_authentication(data: st.DataObject) -> None:
    ciphertext = bytearray(encrypt(KEY, b"a share of a secret", AD))
    position = data.draw(st.integers(0, len(ciphertext) - 1))
    ciphertext[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(SecAggError, match="authentication failed"):
        decrypt(KEY, bytes(ciphertext), AD)


def test_wrong_key_wrong_associated_data_or_short_input_fail_authentication() -> None:
    ciphertext = encrypt(KEY, b"payload", AD)
    with pytest.raises(SecAggError, match="authentication failed"):
        decrypt(bytes(32), ciphertext, AD)
    with pytest.raises(SecAggError, match="authentication failed"):
        decrypt(KEY, ciphertext, AD + b"x")
    for short in (b"", ciphertext[:27]):
        with pytest.raises(SecAggError, match="authentication failed"):
            decrypt(KEY, short, AD)
    with pytest.raises(SecAggError, match="AES-256 key"):
        encrypt(KEY[:16], b"payload", AD)


# --- the mask PRG -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 3, 4, 1000, (1 << 20) + 5])
def test_keystream_matches_a_direct_aes_ctr_computation(length: int) -> None:
    assert np.array_equal(prg(KEY, length), _keystream(KEY, length))


def test_long_vectors_cross_chunk_boundaries_seamlessly() -> None:
    length = 2 * (crypto._CHUNK_BYTES // 4) + 7
    assert np.array_equal(prg(KEY, length), _keystream(KEY, length))


def test_prg_is_deterministic_per_seed_and_differs_between_seeds() -> None:
    assert np.array_equal(prg(KEY, 500), prg(KEY, 500))
    assert not np.array_equal(prg(KEY, 500), prg(bytes(32), 500))
    # A prefix of a longer stream is the shorter stream.
    assert np.array_equal(prg(KEY, 1000)[:500], prg(KEY, 500))


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_add_then_subtract_restores_the_vector_exactly(seed: bytes, values: list[int]) -> None:
    original = np.array(values, dtype=np.uint32)
    out = original.copy()
    add_prg(out, seed)
    expected = (original.astype(np.uint64) + _keystream(seed, len(values))) % 2**32
    assert np.array_equal(out, expected.astype(np.uint32))
    add_prg(out, seed, subtract=True)
    assert np.array_equal(out, original)


def test_prg_output_looks_uniform() -> None:
    values = prg(b"\x07" * 32, 1 << 20).astype(np.float64)
    n = values.size
    sigma = 2**32 / math.sqrt(12) / math.sqrt(n)
    assert abs(values.mean() - 2**31) < 5 * sigma
    # Each of the 32 bit positions is set about half the time.
    words = prg(b"\x07" * 32, 1 << 16)
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 8).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 0.01)


def test_add_prg_refuses_bad_targets_and_seeds() -> None:
    with pytest.raises(SecAggError, match="seed"):
        add_prg(np.zeros(4, dtype=np.uint32), b"short")
    bad_targets: list[npt.NDArray[Any]] = [
        np.zeros(4, dtype=np.int32),
        np.zeros(4, dtype=np.uint64),
        np.zeros((2, 2), dtype=np.uint32),
        np.zeros(8, dtype=np.uint32)[::2],
    ]
    for bad in bad_targets:
        with pytest.raises(SecAggError, match="uint32"):
            add_prg(bad, KEY)
    frozen = np.zeros(4, dtype=np.uint32)
    frozen.flags.writeable = False
    with pytest.raises(SecAggError, match="uint32"):
        add_prg(frozen, KEY)
    with pytest.raises(SecAggError, match="non-negative"):
        prg(KEY, -1)
