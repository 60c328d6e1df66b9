"""Unit tests of quorum.aggregation.robust: hand-computed answers, Flower 1.42's own functions
on the same inputs, permutation invariance, and what f hostile updates can and cannot do."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.server.strategy.aggregate import (
    aggregate_bulyan,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.aggregation import Accumulator, RobustRule, check_memory, make_strategy, round_sum
from quorum.aggregation.robust import BoundedSum, UpdateMatrix, aggregate, krum_select
from quorum.errors import ConfigError

HUGE = float(np.float32(1e30))


def _agg(rule: str, rows: list[list[float]], weights: list[float] | None = None, **kw: object):
    updates = np.asarray(rows, dtype=np.float32)
    w = np.asarray(weights if weights is not None else [1.0] * len(rows))
    return aggregate(RobustRule(rule, **kw), updates, w)  # type: ignore[arg-type]


# ---- known answers ----


def test_median_and_trimmed_mean_by_hand() -> None:
    rows = [[1, -5], [2, 0], [3, 1], [4, 2], [100, 3]]
    np.testing.assert_allclose(_agg("fedmedian", rows), [3, 1])
    # beta 0.2 of 5 values: one dropped at each end
    np.testing.assert_allclose(_agg("fedtrimmedavg", rows, beta=0.2), [3, 1])
    np.testing.assert_allclose(_agg("fedtrimmedavg", rows, beta=0.0), [22, 0.2], rtol=1e-6)
    np.testing.assert_allclose(_agg("fedmedian", [[1.0], [2.0]]), [1.5])


def test_krum_and_multikrum_by_hand() -> None:
    rows = [[0.0], [1.0], [2.0], [50.0], [-60.0]]
    # f = 1: each row scores its n - f - 2 = 2 nearest: 0 -> 1 + 4 = 5, 1 -> 1 + 1 = 2,
    # 2 -> 1 + 4 = 5, 50 -> 48² + 49², -60 -> 60² + 61²: Krum chooses 1.
    np.testing.assert_allclose(_agg("krum", rows, num_malicious_nodes=1), [1.0])
    # Multi-Krum, m = 3: 1, then 0 and 2, weighted by their examples (1, 2, 5)
    got = _agg("multikrum", rows, [2, 1, 5, 1, 1], num_malicious_nodes=1, num_nodes_to_select=3)
    np.testing.assert_allclose(got, [(0 * 2 + 1 * 1 + 2 * 5) / 8])
    # m = 0: n - f = 4 updates, the worst (-60) left out
    got = _agg("multikrum", rows, num_malicious_nodes=1)
    np.testing.assert_allclose(got, [(0 + 1 + 2 + 50) / 4])


def test_bulyan_by_hand() -> None:
    # n = 7, f = 1: Krum picks 5 rows, one at a time (the outlier is never picked; ties go to
    # the row nearer all the others): 3, 2, 4, 1, 5. Then per coordinate the n - 4f = 3 values
    # nearest the median of those 5 (3): 2, 3, 4.
    rows = [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [1000.0]]
    np.testing.assert_allclose(_agg("bulyan", rows, num_malicious_nodes=1), [3.0])
    with pytest.raises(ValueError, match="4f \\+ 3"):
        _agg("bulyan", rows[:6], num_malicious_nodes=1)


def test_norm_bound_clips_before_the_rule() -> None:
    rows = [[3.0, 4.0], [0.3, 0.4], [30.0, 40.0]]
    # norms 5, 0.5, 50, bounded to 1: (0.6, 0.8), (0.3, 0.4), (0.6, 0.8)
    got = _agg("fedmedian", rows, norm_bound=1.0)
    np.testing.assert_allclose(got, [0.6, 0.8], rtol=1e-6)


def test_fedavg_with_a_norm_bound_streams_the_clipped_mean() -> None:
    current = np.array([1.0, 1.0], dtype=np.float32)
    total = round_sum(RobustRule(None, norm_bound=1.0), current, 3)
    assert isinstance(total, BoundedSum)
    total.fold(current + np.array([3.0, 4.0], np.float32), 1.0)  # clipped to (0.6, 0.8)
    total.fold(current + np.array([0.0, 0.5], np.float32), 3.0)  # within the bound
    np.testing.assert_allclose(total.mean(), [1 + 0.6 / 4, 1 + (0.8 + 1.5) / 4], rtol=1e-6)
    assert total.count == 2 and total.total_weight == 4.0
    assert isinstance(round_sum(RobustRule(), current, 3), Accumulator)


def test_the_update_matrix_keeps_copies_and_gives_the_model() -> None:
    current = np.array([10.0, 20.0], dtype=np.float32)
    total = round_sum(RobustRule("fedmedian"), current, 3)
    assert isinstance(total, UpdateMatrix)
    buffer = np.empty(2, dtype=np.float32)
    for delta in ([1.0, -1.0], [2.0, 5.0], [900.0, -900.0]):
        buffer[:] = current + np.asarray(delta, np.float32)
        total.fold(buffer, 1.0)  # the same buffer each time, as an upload's bytes are reused
    np.testing.assert_allclose(total.mean(), [12.0, 19.0])
    assert total.count == 3 and total.total_weight == 3.0
    with pytest.raises(ValueError, match="no room"):
        total.fold(current, 1.0)
    with pytest.raises(ValueError, match="weight"):
        round_sum(RobustRule("fedmedian"), current, 1).fold(current, 0.0)


def test_minimum_updates_and_memory_budget() -> None:
    assert RobustRule("krum", num_malicious_nodes=2).minimum_updates()[0] == 7
    assert (
        RobustRule("multikrum", num_malicious_nodes=1, num_nodes_to_select=9).minimum_updates()[0]
        == 9
    )
    assert RobustRule("bulyan", num_malicious_nodes=2).minimum_updates()[0] == 11
    assert RobustRule("fedmedian").minimum_updates()[0] == 1
    with pytest.raises(ValueError, match="n > 2f \\+ 2"):
        _agg("krum", [[0.0]] * 4, num_malicious_nodes=1)
    check_memory(RobustRule("krum"), 100, 1_000_000, 400)  # 381 MiB
    with pytest.raises(ConfigError, match="robust_memory_mb"):
        check_memory(RobustRule("krum"), 100, 10_000_000, 2048)  # 3815 MiB
    check_memory(RobustRule(None, norm_bound=1.0), 10**6, 10**9, 1)  # streams: no budget


def test_robust_strategies_step_as_fedavg() -> None:
    strategy = make_strategy("fedmedian", server_learning_rate=0.5)
    np.testing.assert_allclose(strategy.step(np.zeros(2), np.ones(2)), [0.5, 0.5])


# ---- against Flower's own functions ----


@pytest.mark.parametrize("seed", range(5))
def test_the_rules_agree_with_flower(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, f = 11, 2
    updates = rng.normal(size=(n, 7)).astype(np.float32)
    updates[:f] *= 30  # two outliers, so that the choices matter
    weights = rng.integers(1, 50, size=n).astype(np.float64)
    # Flower's functions take a list of layers per client; one layer of 7 values here.
    results = [([u.astype(np.float64)], int(w)) for u, w in zip(updates, weights, strict=True)]
    np.testing.assert_allclose(
        _agg("fedmedian", updates.tolist()), aggregate_median(results)[0], rtol=1e-6
    )
    np.testing.assert_allclose(
        _agg("fedtrimmedavg", updates.tolist(), beta=0.2),
        aggregate_trimmed_avg(results, 0.2)[0],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        _agg("krum", updates.tolist(), num_malicious_nodes=f),
        aggregate_krum(results, f, 0)[0],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        _agg(
            "multikrum",
            updates.tolist(),
            weights.tolist(),
            num_malicious_nodes=f,
            num_nodes_to_select=5,
        ),
        aggregate_krum(results, f, 5)[0],
        rtol=1e-5,
    )


@pytest.mark.parametrize("seed", range(5))
def test_bulyan_agrees_with_flower(seed: int) -> None:
    # n = 15, f = 3: Bulyan's last Krum scores the 2 nearest, so that no two rows tie (Flower
    # breaks ties by position, Quorum by the distance to all the others).
    rng = np.random.default_rng(seed)
    updates = rng.normal(size=(15, 7)).astype(np.float32)
    updates[:3] *= 30
    results = [([u.astype(np.float64)], 1) for u in updates]
    np.testing.assert_allclose(
        _agg("bulyan", updates.tolist(), num_malicious_nodes=3),
        aggregate_bulyan(results, 3, aggregate_krum, to_keep=0)[0],
        rtol=1e-5,
    )


# ---- properties ----

RULES = [
    RobustRule("fedmedian"),
    RobustRule("fedtrimmedavg", beta=0.25),
    RobustRule("multikrum", num_malicious_nodes=1, num_nodes_to_select=3),
    RobustRule("bulyan", num_malicious_nodes=1),
]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(RULES) - 1))
def test_the_rules_do_not_depend_on_the_order_of_the_updates(seed: int, which: int) -> None:
    rng = np.random.default_rng(seed)
    updates = rng.normal(size=(8, 5)).astype(np.float32)
    weights = rng.integers(1, 9, size=8).astype(np.float64)
    order = rng.permutation(8)
    rule = RULES[which]
    np.testing.assert_allclose(
        aggregate(rule, updates.copy(), weights),
        aggregate(rule, updates[order].copy(), weights[order]),
        rtol=1e-5,
        atol=1e-6,
    )


hostile_value = st.one_of(
    st.floats(-HUGE, HUGE, width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([-HUGE, HUGE, 0.0]),
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    hostile=st.lists(st.lists(hostile_value, min_size=4, max_size=4), min_size=1, max_size=3),
)
def test_f_hostile_updates_cannot_move_the_median_or_trimmed_mean_out_of_the_honest_range(
    seed: int, hostile: list[list[float]]
) -> None:
    honest = np.random.default_rng(seed).normal(size=(7, 4)).astype(np.float32)
    updates = np.vstack([honest, np.asarray(hostile, np.float32)])
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    weights = np.ones(len(updates))
    # f <= 3 of n <= 10: the median's majority is honest, and beta 0.3 trims 3 at each end.
    for rule in (RobustRule("fedmedian"), RobustRule("fedtrimmedavg", beta=0.3)):
        got = aggregate(rule, updates.copy(), weights)
        assert np.all(got >= lo - 1e-6) and np.all(got <= hi + 1e-6), rule


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    f=st.integers(1, 3),
    scale=st.floats(10.0, HUGE),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_krum_never_chooses_a_far_hostile_update(
    seed: int, f: int, scale: float, sign: float
) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + 3 + 2
    updates = rng.normal(size=(n, 6)).astype(np.float32)
    hostile = rng.choice(n, size=f, replace=False)
    updates[hostile] = (sign * scale * rng.uniform(1, 2, size=(f, 6))).astype(np.float32)
    chosen = krum_select(updates, f, n - f)
    assert not set(chosen.tolist()) & set(hostile.tolist())


@pytest.mark.parametrize(
    "rule", [RobustRule(), RobustRule(None, norm_bound=1.0), RobustRule("fedmedian")]
)
def test_a_round_sum_gives_its_mean_in_parts(rule: RobustRule) -> None:
    """The server reads a round's mean a block at a time as it writes the new model: the parts
    are the whole mean's values, whatever the rule."""
    rng = np.random.default_rng(3)
    current = rng.normal(size=11).astype(np.float32)
    total = round_sum(rule, current, 3)
    for weight in (1.0, 2.0, 5.0):
        total.fold((current + rng.normal(size=11)).astype(np.float32), weight)
    whole = total.mean()
    parts = np.concatenate([total.mean_part(a, min(a + 4, 11)) for a in range(0, 11, 4)])
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-12)
