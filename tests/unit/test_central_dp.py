"""Central DP-FedAvg: clipping, the noise on the aggregate, adaptive clipping, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quorum.client.secure_fit import add_distributed_noise
from quorum.config import CentralDPConfig, RunConfig
from quorum.errors import ConfigError, SecAggError, StoreError
from quorum.privacy.dp.accounting import epsilon, opacus_module
from quorum.privacy.dp.central import (
    CentralDP,
    ClippedSum,
    clip_in_place,
    history_of,
    l2_norm,
    update_noise_multiplier,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def _dp(**overrides: object) -> CentralDP:
    config = CentralDPConfig.model_validate({"enabled": True, **overrides})
    return CentralDP(config, np.random.default_rng(1234))


def _with_norm(direction: np.ndarray, norm: float) -> np.ndarray:
    return direction / np.linalg.norm(direction) * norm


@settings(max_examples=60, deadline=None)
@given(
    reference=arrays(np.float32, 7, elements=st.floats(-10, 10, width=32)),
    updates=st.lists(arrays(np.float32, 7, elements=st.floats(-50, 50, width=32)), min_size=1),
    bound=st.floats(0.01, 20),
)
def test_clipping_bounds_each_contribution(
    reference: np.ndarray, updates: list[np.ndarray], bound: float
) -> None:
    clipped = ClippedSum(reference, bound)
    before = clipped.sum.copy()
    unclipped = 0
    for vector in updates:
        clipped.fold(vector, 5.0)
        contribution = clipped.sum - before
        delta = vector.astype(np.float64) - reference
        norm = float(np.linalg.norm(delta))
        assert np.linalg.norm(contribution) <= bound * (1 + 1e-9)
        if norm <= bound:
            unclipped += 1
            np.testing.assert_allclose(contribution, delta, atol=1e-9)
        else:  # scaled onto the sphere, direction kept
            np.testing.assert_allclose(contribution, delta * (bound / norm), rtol=1e-9, atol=1e-12)
        before = clipped.sum.copy()
    assert clipped.count == len(updates)
    assert clipped.unclipped == unclipped
    assert clipped.total_weight == 5.0 * len(updates)  # a statistic: every site counts once


@pytest.mark.parametrize("adaptive", [False, True])
def test_noise_on_the_aggregate_has_the_configured_standard_deviation(adaptive: bool) -> None:
    size, sites, z, c = 200_000, 8, 1.3, 0.7
    dp = _dp(noise_multiplier=z, clipping_norm=c, adaptive=adaptive, clipped_count_stddev=2.0)
    reference = np.zeros(size, np.float32)
    clipped = dp.collector(reference)
    for _ in range(sites):
        clipped.fold(reference, 1.0)  # zero updates: what comes out is the noise alone
    mean, release = dp.release(clipped, cohort=sites)
    z_updates = update_noise_multiplier(z, 2.0) if adaptive else z
    want = z_updates * c / sites
    # The sample standard deviation of 200k normals is within 1% of the truth with
    # probability 1 - 1e-5; the fixed seed makes the test deterministic.
    assert np.std(mean) == pytest.approx(want, rel=0.01)
    assert abs(np.mean(mean)) < 5 * want / math.sqrt(size)
    assert release.noise_multiplier == z  # the whole mechanism is accounted with z
    assert release.clipping_norm == c


def test_release_is_the_mean_of_clipped_updates_plus_noise() -> None:
    dp = _dp(noise_multiplier=1e-6, clipping_norm=1.0)
    reference = np.full(4, 10.0, np.float32)
    clipped = dp.collector(reference)
    clipped.fold(reference + np.array([3, 0, 0, 4], np.float32), 100.0)  # norm 5: clipped to 1
    clipped.fold(reference + np.array([0, 0.5, 0, 0], np.float32), 1.0)  # inside the bound
    mean, _ = dp.release(clipped, cohort=2)
    np.testing.assert_allclose(mean, [0.3, 0.25, 0.0, 0.4], atol=1e-5)


@pytest.mark.parametrize("quantile", [0.5, 0.9])
def test_adaptive_clipping_moves_the_norm_to_the_target_quantile(quantile: float) -> None:
    rng = np.random.default_rng(7)
    sites = 200
    dp = _dp(
        adaptive=True,
        clipping_norm=0.05,
        target_quantile=quantile,
        clip_learning_rate=0.2,
        noise_multiplier=1.0,
    )
    norms_seen: list[np.ndarray] = []
    reference = np.zeros(5, np.float32)
    for _ in range(150):
        norms = rng.lognormal(mean=math.log(2.0), sigma=0.5, size=sites)
        norms_seen.append(norms)
        clipped = dp.collector(reference)
        for norm in norms:
            clipped.fold(_with_norm(rng.normal(size=5), norm).astype(np.float32), 1.0)
        dp.release(clipped, cohort=sites)
    target = float(np.quantile(np.concatenate(norms_seen), quantile))
    assert dp.clipping_norm == pytest.approx(target, rel=0.15)


def test_adaptive_record_and_count_noise() -> None:
    dp = _dp(adaptive=True, clipping_norm=1.0, noise_multiplier=1.0)
    assert dp.count_stddev(100) == 5.0  # cohort / 20 (Andrew et al.)
    assert dp.count_stddev(4) == 1.0  # at least z, so the updates keep most of the noise
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx(1 / math.sqrt(1 - 1 / 100))
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        update_noise_multiplier(1.0, 0.5)
    clipped = dp.collector(np.zeros(3, np.float32))
    clipped.fold(np.ones(3, np.float32), 1.0)
    _, release = dp.release(clipped, cohort=1)
    assert release.unclipped_fraction is not None
    assert release.next_clipping_norm == pytest.approx(
        math.exp(-0.2 * (release.unclipped_fraction - 0.5))
    )
    assert dp.clipping_norm == release.next_clipping_norm


def test_epsilon_comes_from_opacus_and_grows_with_rounds() -> None:
    dp = _dp(noise_multiplier=1.1, delta=1e-5)
    history = history_of(
        [{"noise_multiplier": 1.1, "sample_rate": 0.5}] * 3
        + [{"noise_multiplier": 0.9, "sample_rate": 0.5}]
    )
    assert history == [(1.1, 0.5, 3), (0.9, 0.5, 1)]
    # Entries merge wherever they stand (composition is order-free): a history stays short.
    assert history_of(
        [{"noise_multiplier": z, "sample_rate": 1.0} for z in (1.0, 0.8, 1.0, 0.8, 1.0)]
    ) == [(1.0, 1.0, 3), (0.8, 1.0, 2)]
    reference = opacus_module("opacus.accountants").RDPAccountant()
    reference.history = list(history)
    assert dp.epsilon(history) == pytest.approx(reference.get_epsilon(delta=1e-5), rel=0.05)
    growing = [
        dp.epsilon(history_of([{"noise_multiplier": 1.1, "sample_rate": 0.5}] * r))
        for r in (1, 2, 5, 20)
    ]
    assert growing == sorted(growing) and growing[0] > 0
    assert epsilon("rdp", 1e-5, []) == 0.0


def test_distributed_release_accounts_for_the_survivors() -> None:
    dp = _dp(noise_multiplier=2.0, clipping_norm=0.5)
    assert dp.site_noise_stddev(4) == pytest.approx(2.0 * 0.5 / 2)
    full = dp.distributed_release(cohort=4, summed=4)
    assert full.noise_multiplier == pytest.approx(2.0)
    # Three of four sites' noise shares reached the sum: less noise, more ε.
    assert dp.distributed_release(4, 3).noise_multiplier == pytest.approx(2.0 * math.sqrt(0.75))
    with pytest.raises(ConfigError, match="adaptive"):
        _dp(adaptive=True).site_noise_stddev(4)


def test_site_clips_and_adds_its_noise_share() -> None:
    rng = np.random.default_rng(3)
    delta = np.zeros(100_000, np.float32)
    delta[0] = 30.0
    add_distributed_noise(delta, 2.0, 0.25, rng)
    assert delta[0] == pytest.approx(2.0, abs=1.5)  # clipped to 2 before the noise
    assert np.std(delta[1:]) == pytest.approx(0.25, rel=0.02)
    for norm, stddev in [(0.0, 1.0), (math.nan, 1.0), (1.0, -1.0), (1.0, math.inf)]:
        with pytest.raises(SecAggError):
            add_distributed_noise(np.ones(3), norm, stddev)


def test_norms_of_extreme_but_finite_updates_do_not_overflow() -> None:
    assert l2_norm(np.ones(100_000, np.float16)) == pytest.approx(math.sqrt(100_000))
    big = np.full(4, 1e200)
    assert l2_norm(big) == pytest.approx(2e200)
    assert not clip_in_place(big, 1.0) and l2_norm(big) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-finite"):
        l2_norm(np.array([1.0, np.inf]))


def test_no_amplification_by_subsampling_is_claimed() -> None:
    dp = _dp()
    clipped = dp.collector(np.zeros(2, np.float32))
    clipped.fold(np.ones(2, np.float32), 1.0)
    assert dp.release(clipped, cohort=100)[1].sample_rate == 1.0
    assert dp.distributed_release(100, 90).entry() == (pytest.approx(math.sqrt(0.9)), 1.0, 1)


def test_clipping_norm_is_checkpointed() -> None:
    dp = _dp(clipping_norm=1.0)
    dp.clipping_norm = 0.37
    other = _dp(clipping_norm=1.0)
    other.load_state(dp.state())
    assert other.clipping_norm == 0.37
    other.load_state({})  # a checkpoint without the key keeps the norm
    assert other.clipping_norm == 0.37
    with pytest.raises(StoreError):
        other.load_state({"central_dp.clipping_norm": np.array([-1.0])})


def test_config_refuses_what_cannot_be_private() -> None:
    base = {"task": "m:t", "central_dp": {"enabled": True, "adaptive": True}}
    with pytest.raises(ValueError, match="secure aggregation hides"):
        RunConfig.model_validate({**base, "secagg": {"enabled": True}})
    fixed = {"task": "m:t", "central_dp": {"enabled": True, "noise_multiplier": 2.0}}
    with pytest.raises(ValueError, match="clip_range 8 would clip the distributed DP noise"):
        RunConfig.model_validate({**fixed, "secagg": {"enabled": True}})  # needs 9.49
    RunConfig.model_validate({**fixed, "secagg": {"enabled": True, "clip_range": 9.5}})
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        CentralDPConfig(enabled=True, adaptive=True, noise_multiplier=1.0, clipped_count_stddev=0.4)
    with pytest.raises(ValueError):
        CentralDPConfig(enabled=True, noise_multiplier=0.0)
    with pytest.raises(ConfigError, match="not enabled"):
        CentralDP(CentralDPConfig())
