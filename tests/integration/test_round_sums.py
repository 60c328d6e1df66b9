"""A round's sum is let go when its round ends, by reference counting alone; the vector it is
made in is the run's, the same every round."""

from __future__ import annotations

import asyncio
import gc
import pathlib
import weakref

import numpy as np
import pytest

from quorum.aggregation import accumulator
from tests.integration.harness import federation, run_config


def test_a_rounds_sum_is_freed_when_its_round_ends_without_the_cycle_collector(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sums: list[weakref.ref[accumulator.Accumulator]] = []
    alive_when_made: list[int] = []
    vectors: list[np.ndarray | None] = []
    made = accumulator.Accumulator.__init__

    def spy(self: accumulator.Accumulator, numel: int, vector: np.ndarray | None = None) -> None:
        alive_when_made.append(sum(r() is not None for r in sums))
        vectors.append(vector)
        made(self, numel, vector)
        sums.append(weakref.ref(self))

    monkeypatch.setattr(accumulator.Accumulator, "__init__", spy)

    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=3, min_fit_sites=2)]) as fed:
            fed.add_site("a", "delta=1.0,n=10,acc=0.9")
            fed.add_site("b", "delta=2.0,n=30,acc=0.6")
            run = await fed.wait_run()
            assert run["rounds_completed"] == 3

    gc.collect()
    gc.disable()
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()
    assert len(alive_when_made) >= 3
    assert alive_when_made == [0] * len(alive_when_made)
    # Every round's sum is made in the run's one vector, faulted in once.
    assert vectors[0] is not None and all(v is vectors[0] for v in vectors)
