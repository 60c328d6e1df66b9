"""The SecAgg+ neighbour graph: symmetric, loop-free, (near-)regular and connected."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.errors import SecAggError
from quorum.privacy.secagg.graph import neighbours


def _connected(graph: list[frozenset[int]]) -> bool:
    seen = {0}
    frontier = [0]
    while frontier:
        for j in graph[frontier.pop()]:
            if j not in seen:
                seen.add(j)
                frontier.append(j)
    return len(seen) == len(graph)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 70), st.integers(0, 2**32))
def test_graph_is_symmetric_loop_free_regular_and_connected(n: int, degree: int, seed: int) -> None:
    graph = neighbours(n, degree, random.Random(seed))
    assert len(graph) == n
    for i, peers in enumerate(graph):
        assert i not in peers
        assert all(0 <= j < n and i in graph[j] for j in peers)
    degrees = {len(peers) for peers in graph}
    if degree >= n - 1:
        assert degrees == {n - 1}
    else:
        assert len(degrees) == 1
        (actual,) = degrees
        assert actual in (degree, degree + 1)
        if degree % 2 == 0 or (n % 2 == 0 and degree >= 3):
            assert actual == degree
    assert _connected(graph)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_small_cohorts_get_the_complete_graph(n: int) -> None:
    graph = neighbours(n, 4, random.Random(0))
    assert graph == [frozenset(set(range(n)) - {i}) for i in range(n)]


def test_the_graph_depends_on_the_rng_and_is_reproducible() -> None:
    a = neighbours(40, 6, random.Random(1))
    assert a == neighbours(40, 6, random.Random(1))
    assert a != neighbours(40, 6, random.Random(2))


def test_refuses_empty_cohorts_and_zero_degree() -> None:
    with pytest.raises(SecAggError, match="at least one site"):
        neighbours(0, 3, random.Random(0))
    with pytest.raises(SecAggError, match="degree"):
        neighbours(5, 0, random.Random(0))
