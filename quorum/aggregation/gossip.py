"""Decentralised (gossip) averaging: who talks to whom each round, and with what weights.

A round's mixing is a doubly stochastic matrix W over the n sites (each row: the weights a site
gives its own model and its in-neighbours'). Three topologies:

- `ring`: each site mixes with its two ring neighbours, Metropolis-Hastings weights (1/3 each).
- `exponential`: the one-peer exponential graph (Ying et al., NeurIPS 2021): in round t each site
  i averages with site (i + 2^(t mod ⌈log2 n⌉)) mod n, weight 1/2 each. For n a power of two
  the product of log2(n) consecutive rounds is exactly the averaging matrix.
- `random-regular`: a fresh random k-regular graph each round (seeded by the run's seed and
  the round), Metropolis-Hastings weights 1/(1 + k).

Metropolis-Hastings weights on an undirected graph: W_ij = 1 / (1 + max(d_i, d_j)) for each
edge, W_ii = 1 - Σ_j W_ij; symmetric and doubly stochastic for any degrees. When a site misses
a round, the rows of its neighbours are renormalised over the sites that are there.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence

import numpy as np

from quorum.errors import ConfigError

TOPOLOGIES = ("ring", "exponential", "random-regular")

Mixing = dict[int, dict[int, float]]
"""site -> {site (itself included) -> weight}: the models a site receives and how it mixes."""


def mixing(topology: str, n: int, round_no: int, *, degree: int = 2, seed: int = 0) -> Mixing:
    """The mixing weights of round `round_no` (from 1) for `n` sites."""
    if n < 1:
        raise ConfigError(f"a gossip round needs at least one site, got {n}")
    if topology == "ring":
        return metropolis_hastings(n, ring_edges(n))
    if topology == "exponential":
        return exponential(n, round_no)
    if topology == "random-regular":
        rng = random.Random(f"{seed}/{round_no}")
        return metropolis_hastings(n, random_regular_edges(n, degree, rng))
    raise ConfigError(f"unknown gossip topology {topology!r}; valid: {', '.join(TOPOLOGIES)}")


def ring_edges(n: int) -> set[tuple[int, int]]:
    return {_edge(i, (i + 1) % n) for i in range(n) if n > 1 and i != (i + 1) % n}


def exponential(n: int, round_no: int) -> Mixing:
    if n == 1:
        return {0: {0: 1.0}}
    hops = math.ceil(math.log2(n))
    shift = 2 ** ((round_no - 1) % hops)
    return {i: {i: 0.5, (i + shift) % n: 0.5} for i in range(n)}


def random_regular_edges(n: int, degree: int, rng: random.Random) -> set[tuple[int, int]]:
    """A uniformly drawn simple k-regular graph (pairing model, retried until simple)."""
    if not 0 <= degree < n or (n * degree) % 2:
        raise ConfigError(
            f"no {degree}-regular graph on {n} sites exists (need degree < sites, even product)"
        )
    for _ in range(10_000):
        stubs = [i for i in range(n) for _ in range(degree)]
        rng.shuffle(stubs)
        edges = {_edge(a, b) for a, b in zip(stubs[::2], stubs[1::2], strict=True) if a != b}
        if len(edges) * 2 == n * degree:
            return edges
    raise ConfigError(f"could not draw a simple {degree}-regular graph on {n} sites")


def metropolis_hastings(n: int, edges: Collection[tuple[int, int]]) -> Mixing:
    degrees = [0] * n
    for a, b in edges:
        degrees[a] += 1
        degrees[b] += 1
    out: Mixing = {i: {} for i in range(n)}
    for a, b in edges:
        w = 1.0 / (1 + max(degrees[a], degrees[b]))
        out[a][b] = w
        out[b][a] = w
    for i in range(n):
        out[i][i] = 1.0 - sum(out[i].values())
    return out


def without(weights: Mixing, missing: Collection[int]) -> Mixing:
    """The round's mixing when `missing` sites are absent: they take no part, and every other
    site renormalises its row over the models it does receive."""
    out: Mixing = {}
    for i, row in weights.items():
        if i in missing:
            continue
        kept = {j: w for j, w in row.items() if j not in missing}
        total = sum(kept.values())
        out[i] = {j: w / total for j, w in kept.items()} if total > 0 else {i: 1.0}
    return out


def mix(models: Sequence[np.ndarray], weights: Mixing) -> dict[int, np.ndarray]:
    """One gossip step of every site in `weights` at once (each computes its own row)."""
    out: dict[int, np.ndarray] = {}
    for i, row in weights.items():
        total = np.zeros(models[i].shape, np.float64)
        for j, w in row.items():
            total += w * models[j]
        out[i] = total
    return out


def _edge(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)
