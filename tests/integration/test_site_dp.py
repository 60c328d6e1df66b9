"""Site-level differential privacy between the real server and real agents: a site's own
budget is enforced at the site, whatever the server asks."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from quorum.client.privacy import enable_site_dp
from quorum.config import SiteDPConfig
from quorum.privacy.dp import DPSettings, PrivacyLedger
from quorum.task import load_task
from tests.integration.harness import federation, run_config, wait_for

HEART = "examples.heart_disease.task:task"
BUDGET = SiteDPConfig(epsilon=1.0, delta=1e-5)


def test_sites_spend_their_own_budget_and_a_spent_site_refuses(tmp_path: pathlib.Path) -> None:
    heart = load_task(HEART)
    config = run_config(
        task=HEART,
        rounds=2,
        min_fit_sites=1,
        min_available_sites=2,
        fraction_evaluate=0.0,
        site_config={"local_steps": 5, "batch_size": 8, "lr": 0.01},
        round_timeout_s=60,  # a first DP-SGD fit on a loaded machine; a retry would spoil counts
    )

    async def scenario() -> None:
        async with federation(tmp_path, [config]) as fed:
            runs = await wait_for(lambda: fed.api("/api/v1/runs"), 10)
            run_id = runs[0]["id"]
            # Hungary's ledger already holds this run's whole budget (as if an earlier agent
            # had spent it): its agent must refuse to train, the run goes on with Cleveland.
            spent_path = tmp_path / "hungarian.privacy.json"
            spent = PrivacyLedger(spent_path, DPSettings(epsilon=1.0, delta=1e-5))
            spent.plan(run_id, 8 / 200, 10)
            spent.record(run_id, 10)
            for name, ledger in [("cleveland", tmp_path / "c.json"), ("hungarian", spent_path)]:
                site_task = heart.site(name, "cpu", 0)
                enable_site_dp(site_task, BUDGET, ledger)
                fed.add_site(name, name, site_task=site_task, task_ref=HEART)
            run = await fed.wait_run(timeout=120)
            assert run["rounds_completed"] == 2
            epsilons = []
            for round_no in (1, 2):
                detail = await fed.api(f"/api/v1/runs/{run_id}/rounds/{round_no}")
                fits = {p["site"]: p for p in detail["participants"] if p["kind"] == "fit"}
                assert fits["hungarian"]["status"] == "refused"
                assert "budget_exhausted" in fits["hungarian"]["error"]
                assert fits["cleveland"]["status"] == "accepted"
                epsilons.append(fits["cleveland"]["metrics"]["dp_epsilon"])
            assert 0 < epsilons[0] < epsilons[1] <= 1.0 + 1e-9

            privacy = await fed.api(f"/api/v1/runs/{run_id}/privacy")
            assert privacy["central"] is None
            sites = {s["site"]: s for s in privacy["sites"]}
            cleveland, hungary = sites["cleveland"], sites["hungarian"]
            assert [r["epsilon"] for r in cleveland["rounds"]] == epsilons
            assert cleveland["epsilon"] == epsilons[-1] and cleveland["budget"] == 1.0
            assert cleveland["budget_remaining"] == pytest.approx(1.0 - epsilons[-1])
            assert cleveland["accountant"] == "rdp" and cleveland["delta"] == 1e-5
            assert cleveland["rounds"][0]["noise_multiplier"] > 0
            assert not cleveland["exhausted"]
            assert hungary["exhausted"] and not hungary["dp"]  # it never trained
            assert [r["status"] for r in hungary["rounds"]] == ["refused", "refused"]

    asyncio.run(scenario())
