"""Unit tests of the site agent's reconnect backoff (full jitter, exponential, capped)."""

from __future__ import annotations

import random

import pytest

from quorum.client.agent import Backoff


@pytest.mark.parametrize("failures", [0, 1, 2, 3, 5, 6, 7, 10, 16, 17, 100, 10_000])
def test_delay_stays_within_full_jitter_bounds(failures: int) -> None:
    backoff = Backoff()
    rng = random.Random(failures)
    bound = min(backoff.cap_s, backoff.base_s * 2 ** min(failures, 64))
    delays = [backoff.delay(failures, rng) for _ in range(500)]
    assert all(0 <= d <= bound for d in delays)
    assert max(delays) > 0.8 * bound  # uses the whole range, not a fixed fraction of it
    assert min(delays) < 0.2 * bound


def test_defaults() -> None:
    assert Backoff() == Backoff(base_s=0.5, cap_s=30.0)


def test_delay_is_capped() -> None:
    backoff = Backoff(base_s=1.0, cap_s=5.0)
    rng = random.Random(7)
    for failures in (3, 4, 10, 63, 64, 1000, 10**9):
        assert all(0 <= backoff.delay(failures, rng) <= 5.0 for _ in range(200))


def test_delay_grows_with_failures_until_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0)
    rng = random.Random(1234)
    means = [sum(backoff.delay(n, rng) for _ in range(2000)) / 2000 for n in range(9)]
    # the mean of uniform(0, b) is b / 2: 0.25, 0.5, 1, 2, 4, 8, 15, 15, 15
    expected = [min(30.0, 0.5 * 2**n) / 2 for n in range(9)]
    for got, want in zip(means, expected, strict=True):
        assert got == pytest.approx(want, rel=0.1)
    assert means[0] < means[1] < means[2] < means[3] < means[4] < means[5] < means[6]


def test_delay_draws_from_the_given_rng() -> None:
    backoff = Backoff()
    a = [backoff.delay(n, random.Random(42)) for n in range(10)]
    b = [backoff.delay(n, random.Random(42)) for n in range(10)]
    assert a == b
    rng, twin = random.Random(99), random.Random(99)
    for n in range(12):
        assert backoff.delay(n, rng) == twin.uniform(0, min(30.0, 0.5 * 2**n))
    c = [backoff.delay(3, random.Random(seed)) for seed in range(10)]
    assert len(set(c)) == 10  # different seeds, different jitter
