"""FedBuff's staleness weights and buffer, and gossip mixing, against hand-computed values."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.aggregation.fedbuff import BLOCK, FedBuff, StaleUpdate, staleness_weight
from quorum.aggregation.gossip import mix, mixing, without
from quorum.client import gossip as site_gossip
from quorum.errors import ConfigError, ConflictError, StoreError
from quorum.wire import blobs


def test_staleness_weights_and_drops() -> None:
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == 0.5  # (1 + 3)^-0.5
    assert staleness_weight(1, 2.0) == 0.25
    assert staleness_weight(7, 0.0) == 1.0
    buffer = FedBuff(2, buffer_size=2, staleness_exponent=0.5, max_staleness=2, version=5)
    assert buffer.admit(5).weight == 1.0
    assert buffer.admit(3).staleness == 2
    with pytest.raises(StaleUpdate, match="exceeds max_staleness 2"):
        buffer.admit(2)
    with pytest.raises(StaleUpdate, match="newer"):
        buffer.admit(6)


def test_a_flush_applies_exactly_k_updates_with_momentum() -> None:
    buffer = FedBuff(
        3, buffer_size=2, staleness_exponent=1.0, server_learning_rate=0.5, server_momentum=0.9
    )
    x = np.zeros(3, np.float32)
    assert not buffer.add(np.array([1.0, 2, 3]), buffer.admit(0))
    with pytest.raises(ValueError, match="1 of 2"):
        buffer.step(x)
    assert buffer.add(np.array([4.0, 0, 0]), buffer.admit(0))
    with pytest.raises(ValueError, match="full"):
        buffer.add(np.zeros(3), buffer.admit(0))
    x = buffer.step(x)  # mean (2.5, 1, 1.5), momentum = mean, x = 0.5 * mean
    np.testing.assert_allclose(x, [1.25, 0.5, 0.75])
    assert x.dtype == np.float32 and buffer.version == 1 and not buffer.buffered
    # Second step: a stale update (τ = 1, weight 1/2) and a fresh one.
    buffer.add(np.array([2.0, 2, 2]), buffer.admit(0))
    buffer.add(np.array([0.0, 0, 1]), buffer.admit(1))
    mean = np.array([0.5, 0.5, 1.0])  # (0.5 * 2 + 0) / 2, (1 + 0) / 2, (1 + 1) / 2
    momentum = 0.9 * np.array([2.5, 1, 1.5]) + mean
    np.testing.assert_allclose(buffer.step(x), x + 0.5 * momentum, rtol=1e-6)
    assert buffer.version == 2


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 5),
    bases=st.lists(st.integers(0, 3), min_size=1, max_size=40),
)
def test_versions_are_monotone_and_no_update_is_applied_twice(k: int, bases: list[int]) -> None:
    """Each update adds a distinct power of two; the model's value says which were applied."""
    buffer = FedBuff(1, buffer_size=k, staleness_exponent=0.0, max_staleness=2)
    x = np.zeros(1, np.float64)
    applied: list[int] = []
    pending: list[int] = []
    versions = [buffer.version]
    for i, lag in enumerate(bases):
        try:
            accepted = buffer.admit(max(0, buffer.version - lag))
        except StaleUpdate:
            continue
        pending.append(i)
        if buffer.add(np.array([2.0**i]), accepted):
            x = buffer.step(x)
            applied += pending
            pending = []
            versions.append(buffer.version)
    assert versions == list(range(len(versions)))
    assert len(applied) == len(set(applied)) == k * (len(versions) - 1)
    assert x[0] * k == pytest.approx(sum(2.0**i for i in applied))


def test_fedbuff_state_round_trip_and_refusals() -> None:
    buffer = FedBuff(2, buffer_size=1, server_momentum=0.5)
    buffer.add(np.ones(2), buffer.admit(0))
    buffer.step(np.zeros(2))
    other = FedBuff(2, buffer_size=1, server_momentum=0.5)
    other.load_state(buffer.state())
    assert other.version == 1
    np.testing.assert_array_equal(other.state()["fedbuff.momentum"], [1.0, 1.0])
    with pytest.raises(StoreError):
        other.load_state({})
    with pytest.raises(StoreError, match="momentum"):
        other.load_state({"fedbuff.version": np.array([2])})
    plain = FedBuff(2, buffer_size=1)  # β = 0: the version alone; an older state's momentum
    assert set(plain.state()) == {"fedbuff.version"}
    plain.load_state({"fedbuff.version": np.array([3]), "fedbuff.momentum": np.zeros(2)})
    assert plain.version == 3 and set(plain.state()) == {"fedbuff.version"}
    for bad in ({"buffer_size": 0}, {"server_momentum": 1.0}, {"max_staleness": -1}):
        with pytest.raises(ConfigError):
            FedBuff(2, **{"buffer_size": 1, **bad})  # type: ignore[arg-type]


def test_fedbuff_step_makes_no_vector_of_the_models_size() -> None:
    """The new momentum is made in the sum's buffer, and the old momentum's buffer takes the
    next sum: a step with momentum allocates no float64 vector of the model's size."""
    numel = 4 * BLOCK  # the momentum is added a block at a time: one block of temporaries
    buffer = FedBuff(numel, buffer_size=1, server_momentum=0.5)
    for step in range(1, 3):
        buffer.add(np.full(numel, 2.0, np.float32), buffer.admit(step - 1))
        tracemalloc.start()
        try:
            state = buffer.propose()
            buffer.load_state(state)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak <= BLOCK * 8 + 4096
        momentum = 2.0 if step == 1 else 0.5 * 2.0 + 2.0
        np.testing.assert_array_equal(buffer.state()["fedbuff.momentum"][:3], [momentum] * 3)
        np.testing.assert_array_equal(state["fedbuff.momentum"][:3], [momentum] * 3)
        assert buffer.version == step and not buffer.buffered


def _distance(models: dict[int, np.ndarray] | list[np.ndarray]) -> float:
    values = list(models.values()) if isinstance(models, dict) else models
    mean = np.mean(values, axis=0)
    return math.sqrt(sum(float(np.sum((v - mean) ** 2)) for v in values))


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_exponential_topology_reaches_the_exact_average_in_log2_n_rounds(n: int) -> None:
    rng = np.random.default_rng(n)
    models = [rng.normal(size=5) for _ in range(n)]
    average = np.mean(models, axis=0)
    rounds = int(math.log2(n))
    current = dict(enumerate(models))
    for t in range(1, rounds + 1):
        if t < rounds:
            assert _distance(current) > 1e-6
        current = mix([current[i] for i in range(n)], mixing("exponential", n, t))
    for value in current.values():
        np.testing.assert_allclose(value, average, atol=1e-12)


@pytest.mark.parametrize(("topology", "n"), [("ring", 10), ("random-regular", 12)])
def test_ring_and_random_regular_contract_geometrically(topology: str, n: int) -> None:
    rng = np.random.default_rng(0)
    models = [rng.normal(size=3) for _ in range(n)]
    average = np.mean(models, axis=0)
    distances = [_distance(models)]
    current = dict(enumerate(models))
    for t in range(1, 61):
        weights = mixing(topology, n, t, degree=3, seed=5)
        for row in weights.values():  # doubly stochastic, every weight positive
            assert sum(row.values()) == pytest.approx(1.0)
            assert min(row.values()) > 0
        for j in range(n):
            assert sum(weights[i].get(j, 0.0) for i in range(n)) == pytest.approx(1.0)
        current = mix([current[i] for i in range(n)], weights)
        distances.append(_distance(current))
        np.testing.assert_allclose(np.mean(list(current.values()), axis=0), average)
    # Every 10 rounds shrink the distance to the average by a fixed factor or better.
    ratios = [distances[t + 10] / distances[t] for t in range(0, 50, 10)]
    assert max(ratios) < 0.9 and distances[-1] < 0.05 * distances[0]


def test_random_regular_graphs_are_fresh_each_round_and_reproducible() -> None:
    first = mixing("random-regular", 10, 1, degree=3, seed=1)
    assert first == mixing("random-regular", 10, 1, degree=3, seed=1)
    assert first != mixing("random-regular", 10, 2, degree=3, seed=1)
    assert all(len(row) == 4 for row in first.values())  # three neighbours and itself
    with pytest.raises(ConfigError, match="regular"):
        mixing("random-regular", 5, 1, degree=3)
    with pytest.raises(ConfigError, match="topology"):
        mixing("star", 5, 1)


def test_a_missing_site_is_skipped_and_the_rows_renormalised() -> None:
    weights = without(mixing("ring", 5, 1), {2})
    assert set(weights) == {0, 1, 3, 4}
    assert weights[1] == pytest.approx({0: 0.5, 1: 0.5})  # its neighbour 2 is gone
    assert weights[0] == pytest.approx({4: 1 / 3, 0: 1 / 3, 1: 1 / 3})
    models = [np.full(2, float(i)) for i in range(5)]
    mixed = mix(models, weights)
    np.testing.assert_allclose(mixed[1], [0.5, 0.5])
    assert 2 not in mixed


def test_fedbuff_buffer_mean_is_example_weighted() -> None:
    buffer = FedBuff(2, buffer_size=2, staleness_exponent=1.0)
    fresh = buffer.admit(0)
    buffer.add(np.array([1.0, 0.0]), fresh, examples=1)
    buffer.add(np.array([0.0, 4.0]), fresh, examples=3)
    # (1·[1, 0] + 3·[0, 4]) / 4: the site with three times the examples pulls three times as far
    np.testing.assert_allclose(buffer.step(np.zeros(2)), [0.25, 3.0])
    stale = FedBuff(1, buffer_size=2, staleness_exponent=1.0, version=1)
    stale.add(np.array([2.0]), stale.admit(0), examples=2)  # τ = 1: s = 1/2
    stale.add(np.array([2.0]), stale.admit(1), examples=2)
    np.testing.assert_allclose(stale.step(np.zeros(1)), [(0.5 * 2 * 2 + 2 * 2) / 4])
    with pytest.raises(ValueError, match="example count"):
        stale.add(np.array([1.0]), stale.admit(2), examples=0)


def test_fedbuff_noise_joins_the_weighted_sum_before_the_mean() -> None:
    buffer = FedBuff(2, buffer_size=2, server_learning_rate=0.5)
    fresh = buffer.admit(0)
    buffer.add(np.array([1.0, 0.0]), fresh)
    buffer.add(np.array([0.0, 1.0]), fresh)
    state = buffer.propose(lambda total: total.__iadd__(np.array([0.2, -0.4])))
    assert set(state) == {"fedbuff.version"}  # no momentum (β = 0): the version alone
    (new,) = buffer.stepped([(0, np.ones(2))])
    # x + η (Σ s·Δ + noise) / K
    np.testing.assert_allclose(new, [1 + 0.5 * 1.2 / 2, 1 + 0.5 * 0.6 / 2])


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_a_proposed_buffer_is_spent_until_its_state_is_loaded(momentum: float) -> None:
    """`propose` turns the sum into the momentum in place: adding to it or proposing again
    would step from a momentum, so both are refused until `load_state` applies the state."""
    buffer = FedBuff(2, buffer_size=1, server_momentum=momentum)
    buffer.add(np.array([1.0, 2.0]), buffer.admit(0))
    state = buffer.propose()
    with pytest.raises(ConflictError, match="cannot add an update: propose"):
        buffer.add(np.ones(2), buffer.admit(0))
    with pytest.raises(ConflictError, match="cannot propose a step: propose"):
        buffer.propose()
    (new,) = buffer.stepped([(0, np.zeros(2))])  # the step's model is still read from it
    np.testing.assert_allclose(new, [1.0, 2.0])
    buffer.load_state(state)  # the step applied: a new buffer
    assert buffer.version == 1
    buffer.add(np.array([2.0, 2.0]), buffer.admit(1))
    np.testing.assert_allclose(buffer.step(np.zeros(2)), [2.0 + momentum, 2.0 + 2 * momentum])


def test_a_spent_buffer_discarded_after_a_failed_checkpoint_takes_updates_again() -> None:
    buffer = FedBuff(2, buffer_size=1, server_momentum=0.5)
    buffer.add(np.array([1.0, 2.0]), buffer.admit(0))
    buffer.propose()  # its checkpoint failed: the state is never loaded
    assert buffer.discard() == 1 and buffer.version == 0
    buffer.add(np.array([4.0, 4.0]), buffer.admit(0))
    # the momentum the failed step proposed never entered: x + η (β·0 + Δ)
    np.testing.assert_allclose(buffer.step(np.zeros(2)), [4.0, 4.0])


def test_a_sites_mix_adds_each_neighbour_block_by_block() -> None:
    rng = np.random.default_rng(0)
    n = 4 * site_gossip.MIX_BLOCK + 3  # several blocks, the last a short one
    mine = rng.normal(size=n).astype(np.float32)
    theirs = [rng.normal(size=n).astype(np.float32) for _ in range(2)]
    layout = blobs.read_layout(blobs.encode({"w": mine}))
    mixing_row = site_gossip.Mix(mine, 0.5)
    tracemalloc.start()
    for j, (vector, weight) in enumerate(zip(theirs, (0.25, 0.125), strict=True)):
        mixing_row.add(j, vector, weight)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # No float64 copy of a neighbour's model (32 MB here), only a block's (8 MB) and its terms.
    assert peak < 3 * site_gossip.MIX_BLOCK * 8
    mixed = blobs.decode(mixing_row.result(blobs.encode({"w": mine}), layout))["w"]
    wide = [v.astype(np.float64) for v in (mine, *theirs)]
    want = (0.5 * wide[0] + 0.25 * wide[1] + 0.125 * wide[2]) / 0.875
    np.testing.assert_allclose(mixed, want.astype(np.float32), rtol=1e-6)
    for j in (0, 1):
        assert mixing_row.distances[j] == pytest.approx(np.linalg.norm(wide[0] - wide[j + 1]))


def test_a_mix_with_no_weight_left_is_the_sites_own_model() -> None:
    trained = blobs.encode({"w": np.ones(3, np.float32)})
    nothing = site_gossip.Mix(blobs.as_flat(trained, blobs.read_layout(trained)), 0.0)
    assert nothing.result(trained, blobs.read_layout(trained)) is trained
