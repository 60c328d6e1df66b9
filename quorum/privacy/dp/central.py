"""Central (user-level) DP-FedAvg on the server, and its distributed form under SecAgg.

DP-FedAvg (McMahan et al. 2018): each site's update `trained - global` is clipped to L2 norm C,
every site counts once (a weight the site reports would let it exceed the sensitivity), and the
sum gets Gaussian noise of standard deviation z·C before it is divided by the number of updates.
One round is then a Gaussian mechanism with noise multiplier z on the set of sites, accounted
for by Opacus's accountants (`quorum.privacy.dp.accounting`): a site-level ("user level")
guarantee on the models the run releases. No amplification by subsampling is claimed (every
round is accounted at sampling rate 1): cohorts are drawn from the run's seed and shown by the
admin API, and under SecAgg the server, the party the guarantee is against, picks them. The
mean divides by the number of updates that arrived, which the run publishes anyway.

Adaptive clipping (Andrew et al. 2021): each site also contributes the bit "my update's norm was
at most C"; the noised mean of those bits b̄ moves C geometrically, C ← C·exp(-η(b̄ - γ)), toward
the norm that leaves a fraction γ of updates unclipped. The bits cost privacy too: with noise σ_b
on their sum, the updates get noise multiplier z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2), so that the two
releases together are exactly one Gaussian mechanism with multiplier z (Andrew et al., Thm. 1).

Async (DP-FedBuff): every update in a FedBuff buffer is clipped to C and counts once (weight
s(τ) <= 1, no example counts), each site has at most one update in a buffer (the driver offers
no work to a site whose update waits in the open buffer), and the buffer's sum gets noise z·C:
each server step is one such Gaussian mechanism, accounted like a sync round (sampling rate 1).
As in DP-FedBuff, who trains when (hence the staleness weights) is treated as public: a site's
update can be replaced in its slot by any other of norm at most C.
Adaptive clipping is not offered there (a step's bits would need their own noise per buffer).

Distributed DP: under secure aggregation the server never sees an update, so each of the n sites
of a cohort clips its own update and adds Gaussian noise of standard deviation z·C/√n; the sum of
the m ≤ n that survive carries noise z·C·√(m/n), and the round is accounted with that effective
multiplier. Adaptive clipping is not available there (the bits would be seen in the clear).

Pure numpy: no I/O. The noise comes from numpy's PCG64 seeded by the OS (floating-point Gaussian
sampling, not Mironov's snapping mechanism).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quorum.aggregation.accumulator import FOLD_BLOCK, Scratch, Update, blocks_of
from quorum.config import CentralDPConfig
from quorum.errors import ConfigError, StoreError
from quorum.privacy.dp.accounting import HistoryEntry, appended, epsilon

STATE_KEY = "central_dp.clipping_norm"
"""The checkpointed clipping norm (adaptive clipping changes it every round)."""
DP_CLIPPING_METRIC = "central_dp_clipping_norm"
DP_NOISE_METRIC = "central_dp_noise_stddev"
"""What a site reports with its masked vector when it applied distributed DP (the server
refuses a vector without them)."""


def l2_norm(vector: np.ndarray) -> float:
    """The L2 norm in float64, scaled so that finite values never overflow (a float16 update of
    norm 300, a float64 one with elements near 1e200)."""
    values = vector.astype(np.float64, copy=False)
    with np.errstate(over="ignore"):  # an overflow is caught below and rescaled
        norm = float(np.linalg.norm(values))
    if math.isfinite(norm) or values.size == 0:
        return norm
    largest = float(np.max(np.abs(values)))
    if not math.isfinite(largest):
        raise ValueError("the update has non-finite values")
    return largest * float(np.linalg.norm(values / largest))


def clip_in_place(delta: np.ndarray, norm_bound: float) -> bool:
    """Scales `delta` (a float vector) to L2 norm at most `norm_bound`; True when it was within
    the bound already (not clipped)."""
    norm = l2_norm(delta)
    if norm <= norm_bound:
        return True
    delta *= norm_bound / norm
    return False


class ClippedDelta:
    """`update - reference` in float64, scaled to L2 norm at most `bound`, as blocks
    (`UpdateBlocks`): the norm is read in a first pass over the update's blocks, each clipped
    block is made in `scratch` in a second, so no vector of the model's size is made. The norm
    is the `math.hypot` of the blocks' norms (no overflow where a sum of squares would)."""

    def __init__(
        self, update: Update, reference: np.ndarray, bound: float, scratch: Scratch
    ) -> None:
        self.update = blocks_of(update, reference.shape[0])
        self.reference = reference
        self._scratch = scratch
        self.norm = math.hypot(*(l2_norm(delta) for _, delta in self._deltas()))
        self.unclipped = self.norm <= bound
        """The update was within the bound (its delta is passed on unscaled)."""
        self._scale = 1.0 if self.unclipped else bound / self.norm

    @property
    def numel(self) -> int:
        return self.update.numel

    def _deltas(self) -> Iterator[tuple[int, np.ndarray]]:
        for start, values in self.update.blocks():
            delta = self._scratch.take(values.shape[0])
            end = start + values.shape[0]
            np.subtract(values, self.reference[start:end], out=delta, dtype=np.float64)
            yield start, delta

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start, delta in self._deltas():
            if self._scale != 1.0:
                delta *= self._scale
            yield start, delta


class ClippedSum:
    """Streaming sum of site updates relative to `reference` (the round's global model), each
    clipped to `clipping_norm` and counted once. Memory: one float64 vector and one block of
    scratch; an update is read twice, block by block (its norm, then its clipped sum)."""

    def __init__(self, reference: np.ndarray, clipping_norm: float) -> None:
        if reference.ndim != 1:
            raise ValueError(f"the reference model must be a flat vector, got {reference.shape}")
        self.reference = reference
        self.clipping_norm = float(clipping_norm)
        self.sum = np.zeros(reference.shape[0], dtype=np.float64)
        self._scratch = Scratch(min(reference.shape[0], FOLD_BLOCK))
        self.count = 0
        self.unclipped = 0
        self.total_weight = 0.0
        """The examples the sites reported: a statistic, never a weight of the mean."""
        self.released = False
        """`CentralDP.release` made `sum` the noised mean in place: nothing more may join it."""

    def fold(self, update: Update, weight: float, /) -> None:
        if self.released:
            raise ValueError("the clipped sum was released: its vector is the noised mean now")
        clipped = ClippedDelta(update, self.reference, self.clipping_norm, self._scratch)
        self.unclipped += clipped.unclipped
        for start, delta in clipped.blocks():
            self.sum[start : start + delta.shape[0]] += delta
        self.count += 1
        self.total_weight += float(weight)


class GaussianNoise:
    """Noise of standard deviation `stddev` for a vector of `numel` values, drawn a block at a
    time into the vector it is added to (`add_to`): no vector of the model's size. The values
    are those of one whole draw, `rng.normal(0.0, stddev, size=numel)`: numpy's `normal` is
    `loc + scale · standard_normal`, one value after the other from the same stream."""

    def __init__(self, rng: np.random.Generator, stddev: float, numel: int) -> None:
        self.rng = rng
        self.stddev = float(stddev)
        self.numel = numel

    def add_to(self, target: np.ndarray) -> None:
        """Adds the noise to `target` (float64, `numel` values) in place; draws it, so call
        once."""
        if target.shape != (self.numel,) or target.dtype != np.float64:
            raise ValueError(
                f"noise for ({self.numel},) float64 cannot be added to {target.shape} "
                f"{target.dtype}"
            )
        scratch = np.empty(min(self.numel, FOLD_BLOCK), np.float64)
        for start in range(0, self.numel, FOLD_BLOCK):
            block = scratch[: min(FOLD_BLOCK, self.numel - start)]
            self.rng.standard_normal(out=block)
            block *= self.stddev
            block += 0.0  # normal()'s loc: a -0.0 becomes 0.0, as in a whole draw
            target[start : start + block.shape[0]] += block


@dataclass(frozen=True)
class RoundRelease:
    """What one round released and what it cost: stored with the round as its `central_dp`
    metrics, from which the run's ε is recomputed."""

    noise_multiplier: float
    """The round's effective z (over the whole mechanism: updates and, if adaptive, bits)."""
    clipping_norm: float
    next_clipping_norm: float
    unclipped_fraction: float | None
    """The noised fraction of updates within the norm (adaptive clipping only)."""

    sample_rate: float = 1.0
    """Always 1: no amplification by subsampling is claimed (see the module docstring)."""

    def entry(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, 1)


class CentralDP:
    """The run's central-DP mechanism: its current clipping norm, the noise, the accounting."""

    def __init__(self, config: CentralDPConfig, rng: np.random.Generator | None = None) -> None:
        if not config.enabled:
            raise ConfigError("central DP is not enabled in this run's config")
        self.config = config
        self.clipping_norm = config.clipping_norm
        self.rng = rng or np.random.default_rng()

    # ---- the server adds the noise (no secure aggregation) ----

    def collector(self, reference: np.ndarray) -> ClippedSum:
        return ClippedSum(reference, self.clipping_norm)

    def release(self, clipped: ClippedSum, cohort: int) -> tuple[np.ndarray, RoundRelease]:
        """The noised mean update of the clipped sum, and the round's record. Moves the
        clipping norm when adaptive. The mean is made in the sum's vector (the noise drawn into
        it a block at a time, the values of one whole draw added to the sum): no second vector
        of the model's size; the clipped sum is spent."""
        m = clipped.count
        if m < 1:
            raise ValueError("no update was folded: nothing to release")
        if clipped.released:
            raise ValueError("the clipped sum was released already")
        cfg = self.config
        z = cfg.noise_multiplier
        c = self.clipping_norm
        unclipped: float | None = None
        z_updates = z
        if cfg.adaptive:
            count_stddev = self.count_stddev(cohort)
            z_updates = update_noise_multiplier(z, count_stddev)
            noised = clipped.unclipped + self.rng.normal(0.0, count_stddev)
            unclipped = noised / m
            step = cfg.clip_learning_rate * (unclipped - cfg.target_quantile)
            self.clipping_norm = c * math.exp(-step)
        mean = clipped.sum
        GaussianNoise(self.rng, z_updates * c, mean.shape[0]).add_to(mean)
        mean /= m
        clipped.released = True
        return mean, RoundRelease(z, c, self.clipping_norm, unclipped)

    def buffer_noise(self, numel: int) -> tuple[GaussianNoise, RoundRelease]:
        """Noise of standard deviation z·C for the sum of one FedBuff buffer of clipped updates
        (drawn when it is added), and the step's record (see the module docstring)."""
        if self.config.adaptive:
            raise ConfigError("adaptive clipping is not available for async runs")
        c = self.clipping_norm
        noise = GaussianNoise(self.rng, self.config.noise_multiplier * c, numel)
        return noise, RoundRelease(self.config.noise_multiplier, c, c, None)

    def count_stddev(self, cohort: int) -> float:
        """σ_b: as configured, else cohort/20 (Andrew et al.), raised to at least z so that
        the updates' share of the noise stays within 2/√3 of z."""
        configured = self.config.clipped_count_stddev
        if configured is not None:
            return configured
        return max(cohort / 20, self.config.noise_multiplier)

    # ---- the sites add the noise (secure aggregation) ----

    def site_noise_stddev(self, cohort: int) -> float:
        """Each of `cohort` sites adds this much noise, so that the whole cohort's sum has z·C."""
        if self.config.adaptive:
            raise ConfigError("adaptive clipping is not available with secure aggregation")
        return self.config.noise_multiplier * self.clipping_norm / math.sqrt(cohort)

    def distributed_release(self, cohort: int, summed: int) -> RoundRelease:
        """The record of a round whose `summed` of `cohort` sites each added their share."""
        z = self.config.noise_multiplier * math.sqrt(summed / cohort)
        c = self.clipping_norm
        return RoundRelease(z, c, c, None)

    # ---- accounting and state ----

    def epsilon(self, history: list[HistoryEntry]) -> float:
        return epsilon(self.config.accountant, self.config.delta, history)

    def metrics(self, release: RoundRelease, history: list[HistoryEntry]) -> dict[str, float]:
        """The round's `central_dp` metrics; `history` is the run's, this round included."""
        out = {
            "epsilon": self.epsilon(history),
            "delta": self.config.delta,
            "noise_multiplier": release.noise_multiplier,
            "sample_rate": release.sample_rate,
            "clipping_norm": release.clipping_norm,
            "next_clipping_norm": release.next_clipping_norm,
        }
        if release.unclipped_fraction is not None:
            out["unclipped_fraction"] = release.unclipped_fraction
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {STATE_KEY: np.array([self.clipping_norm], dtype=np.float64)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        value = state.get(STATE_KEY)
        if value is None:
            return  # a checkpoint from before central DP state: keep the configured norm
        if value.shape != (1,) or not (math.isfinite(float(value[0])) and value[0] > 0):
            raise StoreError(f"checkpointed clipping norm {value!r} is not a positive number")
        self.clipping_norm = float(value[0])


def update_noise_multiplier(z: float, count_stddev: float) -> float:
    """z_Δ with 1/z² = 1/z_Δ² + 1/(2σ_b)²: the updates' noise multiplier when the unclipped
    count, of sensitivity 1/2 after centring, takes noise σ_b."""
    rest = 1 / z**2 - 1 / (2 * count_stddev) ** 2
    if rest <= 0:
        raise ConfigError(
            f"central_dp.clipped_count_stddev = {count_stddev} spends the whole noise multiplier "
            f"{z} on the clipped count: it must exceed noise_multiplier / 2"
        )
    return 1 / math.sqrt(rest)


def history_of(rounds: Sequence[Mapping[str, float]]) -> list[HistoryEntry]:
    """The accountant history of a run from the `central_dp` metrics of every release."""
    history: list[HistoryEntry] = []
    for metrics in rounds:
        history = appended(history, (metrics["noise_multiplier"], metrics["sample_rate"], 1))
    return history
