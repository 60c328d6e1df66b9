"""Central DP-FedAvg between the real server and real agents: clipped updates, noise on the sum
(by the server, or by the sites under secure aggregation), the run's ε and the privacy API."""

from __future__ import annotations

import asyncio
import math
import pathlib
from typing import Any

import numpy as np
import pytest

from quorum.privacy.dp.accounting import epsilon
from tests.integration.harness import federation, run_config

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

NUMEL = 15  # the vector task's model: w (4, 3) and b (3,)
SITES = {"a": "delta=1.0,n=10", "b": "delta=2.0,n=30", "c": "delta=-1.0,n=60"}
ROUNDS = 3


def _final(fed: Any, run_id: str) -> np.ndarray:
    model, _ = fed.services.checkpoints.open(run_id, ROUNDS)
    return np.concatenate([v.reshape(-1) for v in model.params().values()])


def _clipped_mean(norm: float) -> float:
    """Each parameter after the run: every site's update (d everywhere, L2 norm |d|·√15) is
    clipped to `norm`, and the three count once each: (+1 +1 -1)/3 of a clipped element."""
    return ROUNDS * (1 + 1 - 1) / 3 * norm / math.sqrt(NUMEL)


@pytest.mark.parametrize("secure", [False, True], ids=["server-noise", "distributed-secagg"])
def test_central_dp_clips_noises_and_accounts(tmp_path: pathlib.Path, secure: bool) -> None:
    z, norm = 0.5, 0.3
    config = run_config(
        rounds=ROUNDS,
        min_fit_sites=3,
        central_dp={"enabled": True, "noise_multiplier": z, "clipping_norm": norm},
        secagg={"enabled": secure, "clip_range": 2.0, "quantization_bits": 24},
    )

    async def scenario() -> None:
        async with federation(tmp_path, [config]) as fed:
            services = fed.services
            accounted_at_evaluation: list[tuple[int, list[int]]] = []
            open_phase = services.book.open_phase

            def spy(phase: Any, *args: Any, **kwargs: Any) -> None:
                if phase.kind == "evaluate":  # the round's model leaves the server here
                    released = services.store.phase_metrics(phase.run_id, "central_dp")
                    accounted_at_evaluation.append((phase.round, [r for r, _, _ in released]))
                open_phase(phase, *args, **kwargs)

            services.book.open_phase = spy
            for name, data in SITES.items():
                fed.add_site(name, data)
            run = await fed.wait_run(timeout=60)
            # Every round's release was in the store before its model was sent anywhere.
            assert accounted_at_evaluation == [(1, [1]), (2, [1, 2]), (3, [1, 2, 3])]
            final = _final(fed, run["id"])
            # Noise on the mean: z·C/3 per element per round, over 3 rounds.
            noise = z * norm / 3 * math.sqrt(ROUNDS)
            assert abs(float(np.mean(final)) - _clipped_mean(norm)) < 5 * noise / math.sqrt(NUMEL)
            assert np.std(final) > 0.2 * noise  # the noise is there
            # Without clipping the mean would be FedAvg's 3 * (10 + 60 - 60) / 100 = 0.3.

            privacy = await fed.api(f"/api/v1/runs/{run['id']}/privacy")
            central = privacy["central"]
            assert central["mode"] == ("distributed" if secure else "central")
            assert [r["round"] for r in central["rounds"]] == [1, 2, 3]
            epsilons = [r["epsilon"] for r in central["rounds"]]
            for r, eps in enumerate(epsilons, start=1):
                assert eps == pytest.approx(epsilon("rdp", 1e-5, [(z, 1.0, r)]))
            assert epsilons == sorted(epsilons) and central["epsilon"] == epsilons[-1]
            assert all(r["noise_multiplier"] == pytest.approx(z) for r in central["rounds"])
            assert all(r["clipping_norm"] == norm for r in central["rounds"])
            assert [s["site"] for s in privacy["sites"]] == ["a", "b", "c"]
            fits = detail_fits(await fed.api(f"/api/v1/runs/{run['id']}/rounds/1"))
            if secure:  # each site said it applied the round's clipping and noise share
                stddev = z * norm / math.sqrt(3)
                assert all(
                    p["metrics"]["central_dp_noise_stddev"] == pytest.approx(stddev)
                    and p["metrics"]["central_dp_clipping_norm"] == norm
                    for p in fits
                )
            assert not any(s["dp"] for s in privacy["sites"])  # no site-level DP here
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/3")
            assert detail["metrics"]["central_dp"]["epsilon"] == epsilons[-1]

    asyncio.run(scenario())


def detail_fits(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in detail["participants"] if p["kind"] == "fit"]


def test_adaptive_clipping_moves_the_norm_and_survives_in_checkpoints(
    tmp_path: pathlib.Path,
) -> None:
    config = run_config(
        rounds=ROUNDS,
        min_fit_sites=3,
        central_dp={
            "enabled": True,
            "noise_multiplier": 0.5,
            "clipping_norm": 0.01,
            "adaptive": True,
            "clip_learning_rate": 0.5,
            "clipped_count_stddev": 0.3,
        },
    )

    async def scenario() -> None:
        async with federation(tmp_path, [config]) as fed:
            for name, data in SITES.items():
                fed.add_site(name, data)
            run = await fed.wait_run(timeout=60)
            central = (await fed.api(f"/api/v1/runs/{run['id']}/privacy"))["central"]
            norms = [r["clipping_norm"] for r in central["rounds"]]
            # Every update (norm >= 3.9) is far above 0.01: the norm grows each round.
            assert norms[0] == 0.01
            assert norms == sorted(norms) and norms[-1] > norms[0]
            assert central["clipping_norm"] > norms[-1]  # the next round's
            assert all(r["unclipped_fraction"] is not None for r in central["rounds"])
            _, state = fed.services.checkpoints.open(run["id"], ROUNDS)
            assert float(state["central_dp.clipping_norm"][0]) == central["clipping_norm"]

    asyncio.run(scenario())
