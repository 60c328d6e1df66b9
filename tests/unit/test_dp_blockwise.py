"""Central DP made block by block against the whole-vector computation it replaced, run
inline. DP-FedBuff's step (`ClippedDelta`, `GaussianNoise`): before, a float64 delta of the
model's size per update, clipped in place, and one float64 noise vector drawn whole at the
step. A sync round's release: before, a new float64 noise vector to which the sum was added."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from quorum.aggregation.accumulator import FOLD_BLOCK, FlatBlocks, Scratch, subtract_into
from quorum.aggregation.fedbuff import FedBuff
from quorum.config import CentralDPConfig
from quorum.privacy.dp.central import (
    CentralDP,
    ClippedDelta,
    ClippedSum,
    GaussianNoise,
    l2_norm,
    update_noise_multiplier,
)

Z, SEED = 1.3, 20261204
ONE_BLOCK = FOLD_BLOCK - 17
BLOCKS = 3 * FOLD_BLOCK + 123


def _inputs(numel: int, seed: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, int]]]:
    """The current model and three (update, base, base version) of a buffer of K = 3: float32
    models, bases one and two versions old for staleness weights below 1."""
    rng = np.random.default_rng(seed)
    current = rng.standard_normal(numel).astype(np.float32)
    uploads = []
    for base_version in (2, 1, 2):
        base = (current + 0.01 * rng.standard_normal(numel)).astype(np.float32)
        update = (base + 0.02 * rng.standard_normal(numel)).astype(np.float32)
        uploads.append((update, base, base_version))
    return current, uploads


def _dp(**overrides: object) -> CentralDP:
    config = CentralDPConfig.model_validate({"enabled": True, "noise_multiplier": Z, **overrides})
    return CentralDP(config, np.random.default_rng(SEED))


def _buffer(numel: int) -> FedBuff:
    return FedBuff(
        numel, buffer_size=3, staleness_exponent=0.5, server_learning_rate=0.7, version=2
    )


def _whole(
    current: np.ndarray,
    uploads: list,
    bound: float,
    norm_of: Callable[[np.ndarray], float] = l2_norm,
) -> tuple[np.ndarray, list[float]]:
    """The step as computed before (async_driver.fold: `clip_in_place` on a whole float64
    delta; CentralDP.buffer_noise: one whole draw), with the norm taken by `norm_of`; also each
    update's norm."""
    numel = current.shape[0]
    buffer, norms = _buffer(numel), []
    for update, base, base_version in uploads:
        delta = np.empty(numel, np.float64)
        subtract_into(delta, FlatBlocks(update), base)
        norm = norm_of(delta)
        norms.append(norm)
        if norm > bound:  # clip_in_place, with the norm given
            delta *= bound / norm
        buffer.add(delta, buffer.admit(base_version), 1.0, None)
    noise = np.random.default_rng(SEED).normal(0.0, Z * bound, size=numel)

    def add(target: np.ndarray) -> None:
        target += noise

    buffer.propose(add)
    (new,) = buffer.stepped([(0, current.astype(np.float64))])
    return new, norms


def _blockwise(current: np.ndarray, uploads: list, bound: float) -> tuple[np.ndarray, list[float]]:
    """The step as the driver makes it now: block by block."""
    numel = current.shape[0]
    dp = _dp(clipping_norm=bound)
    buffer, scratch, norms = _buffer(numel), Scratch(), []
    for update, base, base_version in uploads:
        clipped = ClippedDelta(FlatBlocks(update), base, bound, scratch)
        norms.append(clipped.norm)
        buffer.add(clipped, buffer.admit(base_version), 1.0, None)
    noise, _ = dp.buffer_noise(numel)
    buffer.propose(noise.add_to)
    (new,) = buffer.stepped([(0, current.astype(np.float64))])
    return new, norms


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("numel", [ONE_BLOCK, BLOCKS])
def test_unclipped_updates_give_the_whole_vector_step_bit_for_bit(numel: int, seed: int) -> None:
    current, uploads = _inputs(numel, seed)
    old, old_norms = _whole(current, uploads, bound=1e6)
    new, _ = _blockwise(current, uploads, bound=1e6)
    assert max(old_norms) < 1e6  # no update was clipped
    assert new.tobytes() == old.tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_updates_of_one_block_give_the_whole_vector_step_bit_for_bit(seed: int) -> None:
    current, uploads = _inputs(ONE_BLOCK, seed)
    old, old_norms = _whole(current, uploads, bound=0.5)
    new, _ = _blockwise(current, uploads, bound=0.5)
    assert min(old_norms) > 0.5  # every update was clipped
    assert new.tobytes() == old.tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_updates_of_many_blocks_differ_by_the_norms_rounding_only(seed: int) -> None:
    """Over several blocks the norm is the hypot of the blocks' norms, where the whole-vector
    computation took one BLAS dot (itself different in its last bits with OpenBLAS's thread
    count): the clip factor C/‖Δ‖ may differ by a few ulps, nothing else does."""
    current, uploads = _inputs(BLOCKS, seed)
    old, old_norms = _whole(current, uploads, bound=0.5)
    new, new_norms = _blockwise(current, uploads, bound=0.5)
    assert min(old_norms) > 0.5
    for old_norm, new_norm in zip(old_norms, new_norms, strict=True):
        assert abs(new_norm - old_norm) <= 16 * math.ulp(old_norm)
    # With the blocks' norm, the whole-vector computation gives the new step bit for bit.
    same_norm, _ = _whole(current, uploads, 0.5, _blocks_norm)
    assert new.tobytes() == same_norm.tobytes()
    scale = float(np.abs(old).max())
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-14 * scale)


def _blocks_norm(delta: np.ndarray) -> float:
    blocks = range(0, delta.shape[0], FOLD_BLOCK)
    return math.hypot(*(l2_norm(delta[start : start + FOLD_BLOCK]) for start in blocks))


@pytest.mark.parametrize("numel", [1, ONE_BLOCK, BLOCKS])
def test_noise_drawn_in_blocks_is_one_whole_draw(numel: int) -> None:
    stddev = 0.37
    target = np.random.default_rng(5).standard_normal(numel)
    want = target + np.random.default_rng(SEED).normal(0.0, stddev, size=numel)
    GaussianNoise(np.random.default_rng(SEED), stddev, numel).add_to(target)
    assert target.tobytes() == want.tobytes()


def test_noise_refuses_a_target_of_another_size_or_dtype() -> None:
    noise = GaussianNoise(np.random.default_rng(SEED), 1.0, 4)
    with pytest.raises(ValueError, match="cannot be added"):
        noise.add_to(np.zeros(5))
    with pytest.raises(ValueError, match="cannot be added"):
        noise.add_to(np.zeros(4, np.float32))


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("numel", [ONE_BLOCK, BLOCKS])
def test_sync_release_in_the_sums_vector_is_the_whole_vector_release(
    numel: int, adaptive: bool
) -> None:
    current, uploads = _inputs(numel, seed=3)
    options = {"clipping_norm": 0.5, "adaptive": adaptive, "clipped_count_stddev": 2.0}
    old_dp, new_dp = _dp(**options), _dp(**options)
    clipped = ClippedSum(current, old_dp.clipping_norm)
    for update, _, _ in uploads:
        clipped.fold(update, 1.0)
    total = clipped.sum.copy()
    # CentralDP.release before: the count's noise (adaptive), then a whole noise vector
    z_updates = update_noise_multiplier(Z, 2.0) if adaptive else Z
    if adaptive:
        old_dp.rng.normal(0.0, 2.0)
    want = old_dp.rng.normal(0.0, z_updates * 0.5, size=numel)
    want += total
    want /= clipped.count
    mean, _ = new_dp.release(clipped, cohort=3)
    assert mean.tobytes() == want.tobytes()
    assert mean is clipped.sum  # no second vector of the model's size
    with pytest.raises(ValueError, match="released already"):
        new_dp.release(clipped, cohort=3)
    with pytest.raises(ValueError, match="was released"):
        clipped.fold(uploads[0][0], 1.0)
