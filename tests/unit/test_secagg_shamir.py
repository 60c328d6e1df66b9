"""Shamir sharing over GF(2^521 - 1): any t shares rebuild the secret, and bad shares are caught."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.errors import SecAggError
from quorum.privacy.secagg import shamir
from quorum.privacy.secagg.shamir import PRIME, SHARE_BYTES, reconstruct, split


@st.composite
def sharings(draw: st.DrawFn) -> tuple[bytes, int, list[int], list[int]]:
    """A secret, a threshold, share coordinates and a random subset of at least t of them."""
    secret = draw(st.binary(min_size=0, max_size=64))
    if draw(st.booleans()):
        secret = b"\x00" * draw(st.integers(1, 4)) + secret[:60]
    n = draw(st.integers(1, 20))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    subset = draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    return secret, t, xs, subset


@settings(max_examples=150, deadline=None)
@given(sharings())
def test_any_threshold_subset_rebuilds_the_exact_secret(
    case: tuple[bytes, int, list[int], list[int]],
) -> None:
    secret, t, xs, subset = case
    shares = split(secret, t, xs)
    assert sorted(shares) == sorted(xs)
    assert all(len(s) == SHARE_BYTES for s in shares.values())
    assert reconstruct({x: shares[x] for x in subset}, t) == secret
    assert reconstruct({x: shares[x] for x in subset[:t]}, t) == secret


def test_leading_zeros_and_empty_secret_survive() -> None:
    for secret in (b"", b"\x00", b"\x00" * 64, b"\x00\x00\x01", b"\xff" * 64):
        shares = split(secret, 3, [1, 2, 3, 4])
        assert reconstruct(shares, 3) == secret


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=64), st.integers(2, 10), st.randoms(use_true_random=False))
def test_fewer_than_threshold_shares_are_refused(secret: bytes, t: int, rng: random.Random) -> None:
    shares = split(secret, t, list(range(1, t + 3)))
    few = dict(rng.sample(sorted(shares.items()), t - 1))
    with pytest.raises(SecAggError, match="cannot rebuild"):
        reconstruct(few, t)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=64), st.integers(2, 10), st.randoms(use_true_random=False))
def test_a_forged_share_never_yields_the_secret(secret: bytes, t: int, rng: random.Random) -> None:
    xs = list(range(1, t + 3))
    shares = split(secret, t, xs)
    honest = dict(rng.sample(sorted(shares.items()), t - 1))
    forged_x = rng.choice([x for x in xs if x not in honest])
    forged = {**honest, forged_x: rng.randrange(PRIME).to_bytes(SHARE_BYTES, "big")}
    try:
        assert reconstruct(forged, t) != secret
    except SecAggError as exc:
        assert "encoding" in str(exc)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 8), st.integers(1, 5), st.data())
def test_an_inconsistent_extra_share_is_detected(
    secret: bytes, t: int, extra: int, data: st.DataObject
) -> None:
    xs = list(range(1, t + extra + 1))
    shares = split(secret, t, xs)
    victim = data.draw(st.sampled_from(xs))
    value = int.from_bytes(shares[victim], "big")
    shares[victim] = ((value + data.draw(st.integers(1, PRIME - 1))) % PRIME).to_bytes(
        SHARE_BYTES, "big"
    )
    with pytest.raises(SecAggError, match="inconsistent shares"):
        reconstruct(shares, t)


def test_threshold_one_shares_are_the_encoded_secret_everywhere() -> None:
    shares = split(b"abc", 1, [1, 5, 9])
    assert len(set(shares.values())) == 1
    assert reconstruct({5: shares[5]}, 1) == b"abc"


def test_shares_differ_between_two_splits_of_one_secret() -> None:
    assert split(b"k" * 32, 2, [1, 2]) != split(b"k" * 32, 2, [1, 2])


@pytest.mark.parametrize(
    ("secret", "threshold", "xs", "match"),
    [
        (b"x" * 65, 1, [1], "too long"),
        (b"x", 1, [0], "coordinate"),
        (b"x", 1, [-3], "coordinate"),
        (b"x", 1, [PRIME], "coordinate"),
        (b"x", 2, [1, 1], "distinct"),
        (b"x", 0, [1, 2], "threshold 0"),
        (b"x", 3, [1, 2], "threshold 3"),
    ],
)
def test_split_refuses_bad_arguments(
    secret: bytes, threshold: int, xs: list[int], match: str
) -> None:
    with pytest.raises(SecAggError, match=match):
        split(secret, threshold, xs)


def test_reconstruct_refuses_malformed_shares() -> None:
    shares = split(b"secret", 2, [1, 2, 3])
    with pytest.raises(SecAggError, match="65 bytes"):
        reconstruct({1: shares[1], 2: shares[2][1:]}, 2)
    with pytest.raises(SecAggError, match="not a field element"):
        reconstruct({1: shares[1], 2: b"\xff" * SHARE_BYTES}, 2)
    with pytest.raises(SecAggError, match="coordinate"):
        reconstruct({0: shares[1], 2: shares[2]}, 2)
    with pytest.raises(SecAggError, match="threshold 0"):
        reconstruct(shares, 0)


def test_a_value_without_the_length_marker_is_not_a_secret() -> None:
    # A constant polynomial whose value does not start with the 0x01 marker byte.
    bogus = (2**300).to_bytes(SHARE_BYTES, "big")
    with pytest.raises(SecAggError, match="encoding"):
        reconstruct({1: bogus}, 1)
    with pytest.raises(SecAggError, match="encoding"):
        reconstruct({1: bytes(SHARE_BYTES)}, 1)
    assert shamir.MAX_SECRET_BYTES == 64
