"""Shamir secret sharing over GF(2^521 - 1).

The field is large enough to hold a 64-byte secret (a 32-byte mask seed or a raw X25519 private
key, with room to spare) in a single element, so each share is one field element. The secret is
encoded behind a 0x01 byte so that leading zero bytes, and the secret's length, survive the trip
through an integer.

When more shares than the threshold are available, `reconstruct` checks that the extra ones lie
on the interpolated polynomial: a corrupted or forged share is then reported instead of silently
yielding a wrong secret.
"""

from __future__ import annotations

import operator
import secrets
from collections.abc import Mapping, Sequence
from typing import SupportsIndex

from quorum.errors import SecAggError

PRIME = 2**521 - 1
SHARE_BYTES = 66
MAX_SECRET_BYTES = 64
_MARKER = b"\x01"


def _encode(secret: bytes) -> int:
    return int.from_bytes(_MARKER + secret, "big")


def _decode(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if not raw or raw[:1] != _MARKER or len(raw) > MAX_SECRET_BYTES + 1:
        raise SecAggError(
            "the reconstructed value is not a valid secret encoding: wrong or corrupt shares"
        )
    return raw[1:]


def _check_x(x: SupportsIndex) -> int:
    try:
        value = operator.index(x)  # numpy integers too, but not floats
    except TypeError:
        value = 0
    if isinstance(x, bool) or not 1 <= value < PRIME:
        raise SecAggError(f"share coordinate {x!r} is invalid: expected an integer >= 1")
    return value


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares `secret` so that any `threshold` of the shares rebuild it and fewer reveal nothing."""
    if len(secret) > MAX_SECRET_BYTES:
        raise SecAggError(
            f"a secret of {len(secret)} bytes is too long to share: at most {MAX_SECRET_BYTES}"
        )
    points = [_check_x(x) for x in xs]
    if len(set(points)) != len(points):
        raise SecAggError(f"share coordinates must be distinct, got {sorted(points)}")
    if not 1 <= threshold <= len(points):
        raise SecAggError(
            f"threshold {threshold} is invalid for {len(points)} shares: expected 1..{len(points)}"
        )
    coefficients = [_encode(bytes(secret))]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in points}


class _Interpolant:
    """The polynomial through `threshold` points, in Lagrange form, evaluable anywhere else.

    The denominators depend only on the (small) coordinates, so they are computed once with exact
    integers and inverted once each.
    """

    def __init__(self, points: Sequence[tuple[int, int]]) -> None:
        self._xs = [x for x, _ in points]
        self._weights = []
        for i, (xi, yi) in enumerate(points):
            denominator = 1
            for j, xj in enumerate(self._xs):
                if j != i:
                    denominator *= xi - xj
            self._weights.append(yi * pow(denominator % PRIME, -1, PRIME) % PRIME)

    def at(self, x: int) -> int:
        # prod_{j != i} (x - x_j) from prefix and suffix products: O(t) per evaluation point.
        diffs = [x - xj for xj in self._xs]
        suffix = [1] * (len(diffs) + 1)
        for k in range(len(diffs) - 1, -1, -1):
            suffix[k] = suffix[k + 1] * diffs[k] % PRIME
        total = 0
        prefix = 1
        for k, w in enumerate(self._weights):
            total += w * (prefix * suffix[k + 1] % PRIME)
            prefix = prefix * diffs[k] % PRIME
        return total % PRIME


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Rebuilds the secret from the `threshold` shares with the smallest coordinates.

    Every further share is checked against the polynomial those define.
    """
    if threshold < 1:
        raise SecAggError(f"threshold {threshold} is invalid: expected at least 1")
    if len(shares) < threshold:
        raise SecAggError(
            f"{len(shares)} shares cannot rebuild a secret shared with threshold {threshold}"
        )
    points: list[tuple[int, int]] = []
    for key, share in sorted(shares.items()):
        x = _check_x(key)
        if len(share) != SHARE_BYTES:
            raise SecAggError(f"share at x={x} is {len(share)} bytes long: expected {SHARE_BYTES}")
        y = int.from_bytes(share, "big")
        if y >= PRIME:
            raise SecAggError(f"share at x={x} is not a field element (not below 2^521 - 1)")
        points.append((x, y))
    polynomial = _Interpolant(points[:threshold])
    for x, y in points[threshold:]:
        if polynomial.at(x) != y:
            raise SecAggError(
                f"inconsistent shares: the share at x={x} does not lie on the polynomial of the "
                f"first {threshold} shares, so at least one share is corrupt"
            )
    return _decode(polynomial.at(0))
