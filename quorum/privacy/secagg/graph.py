"""The SecAgg+ communication graph: which sites exchange keys, shares and pairwise masks.

Bell et al. (CCS 2020) show that each site needs only O(log n) neighbours instead of all n - 1,
which makes the cost per site logarithmic. The graph here is a Harary-style circulant over a
random ordering of the sites: regular, so every site carries the same load, and always connected
(it contains a Hamiltonian cycle). Connectivity matters for privacy, not only for correctness:
the pairwise masks of a connected component cancel within it, so the server could sum a
component's masked vectors on its own and learn that component's partial sum.
"""

from __future__ import annotations

import random

from quorum.errors import SecAggError


def neighbours(num_sites: int, degree: int, rng: random.Random) -> list[frozenset[int]]:
    """Neighbour sets of sites 0..num_sites-1, each of size `degree` or `degree` + 1.

    An odd degree is kept exactly when the number of sites is even (each site is also joined to
    the site opposite it in the ordering); otherwise no regular graph of that degree exists and
    it is rounded up. A degree of 1 is rounded up to 2, because a perfect matching is not
    connected.
    """
    if num_sites < 1:
        raise SecAggError(f"a SecAgg graph needs at least one site, got {num_sites}")
    if degree < 1:
        raise SecAggError(f"the SecAgg neighbour degree must be at least 1, got {degree}")
    n = num_sites
    if degree >= n - 1:
        return [frozenset(j for j in range(n) if j != i) for i in range(n)]
    half = degree // 2
    opposite = degree % 2 == 1 and n % 2 == 0 and degree >= 3
    if degree % 2 == 1 and not opposite:
        half += 1  # degree + 1 <= n - 1, so the offsets 1..half stay below n / 2
    offsets = list(range(1, half + 1))
    if opposite:
        offsets.append(n // 2)
    order = list(range(n))
    rng.shuffle(order)
    graph: list[set[int]] = [set() for _ in range(n)]
    for position, site in enumerate(order):
        for offset in offsets:
            other = order[(position + offset) % n]
            graph[site].add(other)
            graph[other].add(site)
    return [frozenset(g) for g in graph]
