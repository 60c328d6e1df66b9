"""Byzantine-robust aggregation: rules that bound what a few hostile sites can do to a round.

- `fedmedian`: the coordinate-wise median (Yin et al. 2018).
- `fedtrimmedavg`: the coordinate-wise mean after dropping the `beta` fraction of largest and of
  smallest values (Yin et al. 2018; Flower's name and parameter).
- `krum` / `multikrum`: the update (Krum) or the example-weighted mean of the `m` updates
  (Multi-Krum) whose n - f - 2 nearest neighbours are closest (Blanchard et al. 2017); `f` is
  Flower's `num_malicious_nodes`, `m` its `num_nodes_to_select`. Needs n >= 2f + 3.
- `bulyan`: Krum chosen n - 2f times without replacement, then per coordinate the mean of the
  n - 4f chosen values nearest their median (El Mhamdi et al. 2018). Needs n >= 4f + 3.
- norm bounding: each update's L2 norm clipped to a bound before any rule, or before the plain
  example-weighted mean (`BoundedSum`, streaming) (Sun et al. 2019).

The rules work on updates relative to the round's global model (deltas), which changes nothing
for the median, trimmed mean, Krum and Bulyan (translation invariant) and is what norm bounding
needs. As in Flower, every rule but Multi-Krum ignores the sites' example counts (a hostile site
could claim any count).

Memory: the robust rules need every update of a round at once: `UpdateMatrix` keeps them as
float32 rows, N·P·4 bytes for N updates of P parameters, against the two float64 vectors of the
streaming `Accumulator`. `check_memory` refuses a cohort whose matrix would exceed the run's
budget. The rules themselves work on blocks of columns, so their temporaries stay small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from quorum.aggregation.accumulator import (
    Accumulator,
    Update,
    UpdateSum,
    blocks_of,
    check_weight,
    subtract_into,
)
from quorum.errors import ConfigError

ROBUST_RULES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
"""Strategies that keep every update of a round; their server step is FedAvg's."""

COLUMN_BLOCK = 1 << 16
"""Columns sorted or multiplied at once: a rule's temporaries are N × this, not N × P."""


@dataclass(frozen=True)
class RobustRule:
    """How a round's updates are combined (`rule` None: the plain example-weighted mean)."""

    rule: str | None = None
    beta: float = 0.2
    num_malicious_nodes: int = 0
    num_nodes_to_select: int = 0
    norm_bound: float | None = None

    @property
    def keeps_updates(self) -> bool:
        return self.rule is not None

    def minimum_updates(self) -> tuple[int, str]:
        """The fewest updates the rule can combine, and why."""
        f = self.num_malicious_nodes
        if self.rule == "krum":
            return 2 * f + 3, f"krum with num_malicious_nodes={f} needs n > 2f + 2"
        if self.rule == "multikrum":
            m = self.num_nodes_to_select
            return max(2 * f + 3, m), (
                f"multikrum with num_malicious_nodes={f} and num_nodes_to_select={m} needs "
                "n > 2f + 2 and n >= m"
            )
        if self.rule == "bulyan":
            return 4 * f + 3, f"bulyan with num_malicious_nodes={f} needs n >= 4f + 3"
        return 1, "a round needs an update"


def check_memory(rule: RobustRule, cohort: int, numel: int, budget_mb: float) -> None:
    """Refuses a rule that would keep more than `budget_mb` MiB of updates for a cohort of
    `cohort` sites and a model of `numel` parameters."""
    if not rule.keeps_updates:
        return
    needed_mb = cohort * numel * 4 / 2**20
    if needed_mb > budget_mb:
        raise ConfigError(
            f"{rule.rule} keeps every update of a round in memory: {cohort} sites × {numel:,} "
            f"parameters × 4 bytes = {needed_mb:,.0f} MiB, over robust_memory_mb = "
            f"{budget_mb:g}; lower max_fit_sites or raise robust_memory_mb"
        )


# ---- the rules, on a matrix of updates (one row per site) ----


def _blocks(numel: int) -> range:
    return range(0, numel, COLUMN_BLOCK)


def clip_rows(updates: np.ndarray, bound: float) -> None:
    """Scales each row of `updates` in place to L2 norm at most `bound`."""
    norms = np.sqrt(np.einsum("ij,ij->i", updates, updates, dtype=np.float64))
    scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
    updates *= scale[:, None].astype(updates.dtype)


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    out = np.empty(updates.shape[1], dtype=np.float64)
    for a in _blocks(updates.shape[1]):
        out[a : a + COLUMN_BLOCK] = np.median(updates[:, a : a + COLUMN_BLOCK], axis=0)
    return out


def trimmed_mean(updates: np.ndarray, beta: float) -> np.ndarray:
    """Drops int(beta · n) values at each end of every coordinate (Flower's and scipy's cut)."""
    n = updates.shape[0]
    cut = int(beta * n)
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must lie in [0, 0.5), got {beta}")
    out = np.empty(updates.shape[1], dtype=np.float64)
    for a in _blocks(updates.shape[1]):
        part = np.partition(updates[:, a : a + COLUMN_BLOCK], (cut, n - cut - 1), axis=0)
        out[a : a + COLUMN_BLOCK] = part[cut : n - cut].mean(axis=0, dtype=np.float64)
    return out


def squared_distances(updates: np.ndarray) -> np.ndarray:
    """The n × n matrix of squared L2 distances between rows, in float64."""
    gram = np.zeros((updates.shape[0], updates.shape[0]), dtype=np.float64)
    for a in _blocks(updates.shape[1]):
        block = updates[:, a : a + COLUMN_BLOCK].astype(np.float64)
        gram += block @ block.T
    sq = np.diag(gram)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Each row's sum of squared distances to its n - f - 2 nearest other rows (at least 1)."""
    n = distances.shape[0]
    closest = max(1, n - f - 2)
    others = distances + np.diag(np.full(n, np.inf))  # a row is not its own neighbour
    nearest = np.sort(others, axis=1)[:, :closest]
    scores: np.ndarray = nearest.sum(axis=1)
    return scores


def krum_order(distances: np.ndarray, f: int) -> np.ndarray:
    """Rows by Krum score, best first. Ties (two rows that are each other's only counted
    neighbour score alike) go to the row nearer all the others, so that the choice does not
    depend on the order the updates arrived in."""
    order: np.ndarray = np.lexsort((distances.sum(axis=1), krum_scores(distances, f)))
    return order


def krum_select(updates: np.ndarray, f: int, m: int) -> np.ndarray:
    """The indices of the `m` rows of lowest Krum score, best first (ties: the lower index)."""
    order: np.ndarray = krum_order(squared_distances(updates), f)[:m]
    return order


def krum(updates: np.ndarray, weights: np.ndarray, f: int, m: int) -> np.ndarray:
    """Krum (m <= 1: the best row) or Multi-Krum (the weighted mean of the best m rows)."""
    chosen = krum_select(updates, f, max(1, m))
    w = weights[chosen] / weights[chosen].sum()
    mean: np.ndarray = np.tensordot(w, updates[chosen].astype(np.float64), axes=1)
    return mean


def bulyan(updates: np.ndarray, f: int) -> np.ndarray:
    n = updates.shape[0]
    if n < 4 * f + 3:
        raise ValueError(f"bulyan needs n >= 4f + 3 updates, got n = {n}, f = {f}")
    distances = squared_distances(updates)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * f):  # Krum again and again over those not chosen yet
        best = krum_order(distances[np.ix_(remaining, remaining)], f)[0]
        chosen.append(remaining.pop(int(best)))
    selected = updates[chosen]
    keep = len(chosen) - 2 * f
    out = np.empty(updates.shape[1], dtype=np.float64)
    for a in _blocks(updates.shape[1]):
        block = selected[:, a : a + COLUMN_BLOCK].astype(np.float64)
        median = np.median(block, axis=0)
        nearest = np.argsort(np.abs(block - median), axis=0, kind="stable")[:keep]
        out[a : a + COLUMN_BLOCK] = np.take_along_axis(block, nearest, axis=0).mean(axis=0)
    return out


def aggregate(rule: RobustRule, updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The robust aggregate of the rows of `updates` (clipped in place first when the rule has a
    norm bound), as float64."""
    n = updates.shape[0]
    needed, why = rule.minimum_updates()
    if n < needed:
        raise ValueError(f"{n} update(s): {why}")
    if rule.norm_bound is not None:
        clip_rows(updates, rule.norm_bound)
    f = rule.num_malicious_nodes
    if rule.rule == "fedmedian":
        return coordinate_median(updates)
    if rule.rule == "fedtrimmedavg":
        return trimmed_mean(updates, rule.beta)
    if rule.rule == "krum":
        return krum(updates, weights, f, 1)
    if rule.rule == "multikrum":
        return krum(updates, weights, f, rule.num_nodes_to_select or n - f)
    if rule.rule == "bulyan":
        return bulyan(updates, f)
    raise ValueError(f"unknown robust rule {rule.rule!r}; valid: {', '.join(ROBUST_RULES)}")


# ---- what a round folds its updates into ----


class RoundSum(UpdateSum, Protocol):
    """An `UpdateSum` that gives the round's aggregate model where FedAvg takes the mean."""

    @property
    def total_weight(self) -> float: ...

    def mean(self) -> np.ndarray: ...

    def mean_part(self, start: int, stop: int) -> np.ndarray:
        """Values [start, stop) of `mean()` (the plain and the bounded sums compute only
        those)."""
        ...


class UpdateMatrix:
    """Keeps every update of a round (relative to `current`, float32, one row per site):
    O(N·P) memory, N·P·4 bytes, allocated once for the `capacity` sites of the cohort.
    `mean()` is the robust aggregate model, in float64."""

    def __init__(self, rule: RobustRule, current: np.ndarray, capacity: int) -> None:
        self.rule = rule
        self.current = current
        self._rows = np.empty((capacity, current.shape[0]), dtype=np.float32)
        self._weights = np.empty(capacity, dtype=np.float64)
        self._count = 0
        self._aggregate: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return float(self._weights[: self._count].sum())

    def fold(self, update: Update, weight: float, /) -> None:
        source = blocks_of(update, self.current.shape[0])
        weight = check_weight(weight)
        if self._count == len(self._rows):
            raise ValueError(f"the round's cohort has {len(self._rows)} sites: no room for more")
        # A copy: `update` may be a view of an upload's bytes, released after the fold.
        subtract_into(self._rows[self._count], source, self.current)
        self._weights[self._count] = weight
        self._count += 1

    def mean(self) -> np.ndarray:
        n = self._count
        delta = aggregate(self.rule, self._rows[:n], self._weights[:n])
        delta += self.current
        return delta

    def mean_part(self, start: int, stop: int) -> np.ndarray:
        # Krum's distances need whole rows: the aggregate is made once, then read in parts.
        if self._aggregate is None:
            self._aggregate = self.mean()
        return self._aggregate[start:stop]


class BoundedSum:
    """FedAvg with norm bounding, streaming: each update (relative to `current`) is clipped to
    `norm_bound`, and `mean()` is `current` plus the example-weighted mean of the clipped
    updates. Memory: an `Accumulator` and one float32 row."""

    def __init__(
        self, current: np.ndarray, norm_bound: float, vector: np.ndarray | None = None
    ) -> None:
        self.current = current
        self.norm_bound = norm_bound
        self._sum = Accumulator(current.shape[0], vector)
        self._row = np.empty((1, current.shape[0]), dtype=np.float32)

    @property
    def count(self) -> int:
        return self._sum.count

    @property
    def total_weight(self) -> float:
        return self._sum.total_weight

    def fold(self, update: Update, weight: float, /) -> None:
        subtract_into(self._row[0], blocks_of(update, self.current.shape[0]), self.current)
        clip_rows(self._row, self.norm_bound)
        self._sum.fold(self._row[0], weight)

    def mean(self) -> np.ndarray:
        return self.mean_part(0, self.current.shape[0])

    def mean_part(self, start: int, stop: int) -> np.ndarray:
        mean = self._sum.mean_part(start, stop)
        mean += self.current[start:stop]
        return mean


def round_sum(
    rule: RobustRule, current: np.ndarray, cohort: int, vector: np.ndarray | None = None
) -> RoundSum:
    """What a round of `cohort` sites folds its updates into under `rule`; a streaming sum is
    made in `vector` when given (`Accumulator`)."""
    if rule.keeps_updates:
        return UpdateMatrix(rule, current, cohort)
    if rule.norm_bound is not None:
        return BoundedSum(current, rule.norm_bound, vector)
    return Accumulator(current.shape[0], vector)
