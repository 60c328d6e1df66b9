"""Byzantine-robust sync rounds between the real server and real agents over loopback gRPC."""

from __future__ import annotations

import asyncio
import pathlib

import numpy as np
import pytest

from quorum.errors import ConfigError
from tests.integration.harness import federation, first_aborted, run_config

HONEST = [("a", "delta=1.0,n=10"), ("b", "delta=1.0,n=20"), ("c", "delta=1.0,n=30")]
HOSTILE = ("evil", "delta=1000.0,n=500")  # far off, and claiming the most examples


def _final(fed: object, run_id: str, rounds: int) -> np.ndarray:
    model, _ = fed.services.checkpoints.open(run_id, rounds)  # type: ignore[attr-defined]
    return np.concatenate([v.reshape(-1) for v in model.params().values()])


@pytest.mark.parametrize(
    ("settings", "per_round"),
    [
        ({"strategy": "fedmedian"}, 1.0),
        ({"strategy": "fedtrimmedavg", "beta": 0.25}, 1.0),
        ({"strategy": "krum", "num_malicious_nodes": 0}, 1.0),
        # 15 parameters moved by 1.0: each honest update has norm √15, bounded to 1; the
        # hostile one (norm 1000·√15) too, and its 500 examples weigh 500 / 560.
        ({"strategy": "fedavg", "norm_bound": 1.0}, 1 / np.sqrt(15)),
    ],
)
def test_a_hostile_site_cannot_move_a_robust_round(
    tmp_path: pathlib.Path, settings: dict[str, object], per_round: float
) -> None:
    async def scenario() -> None:
        cfg = run_config(rounds=2, min_fit_sites=4, max_fit_sites=4, **settings)
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in [*HONEST, HOSTILE]:
                fed.add_site(name, data)
            run = await fed.wait_run()
            np.testing.assert_allclose(_final(fed, run["id"], 2), 2 * per_round, rtol=1e-5)
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/2")
            assert detail["metrics"]["fit"]["num_sites"] == 4

    asyncio.run(scenario())


def test_a_round_with_fewer_updates_than_krum_needs_is_aborted_with_the_reason(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        cfg = run_config(
            rounds=1, strategy="krum", num_malicious_nodes=1, min_fit_sites=3, max_fit_sites=6
        )
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in HONEST:
                fed.add_site(name, data)
            aborted = await first_aborted(fed)
            assert aborted["abort_reason"] == (
                "3 valid update(s) of 3 offered; krum with num_malicious_nodes=1 needs n > 2f + 2"
            )

    asyncio.run(scenario())


def test_a_cohort_beyond_the_memory_budget_is_refused_at_submission(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            # 15 parameters × 4 bytes × 20,000 sites = 1.14 MiB
            big = run_config(strategy="fedmedian", max_fit_sites=20_000, robust_memory_mb=1)
            with pytest.raises(ConfigError, match="20000 sites × 15 parameters"):
                fed.server.coordinator.submit(big)
            fed.server.coordinator.submit(big.model_copy(update={"max_fit_sites": 10_000}))

    asyncio.run(scenario())
