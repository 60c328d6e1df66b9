"""Gossip runs through the CLI with real processes: the heart-disease simulation, a site
SIGKILLed mid-run that resumes from the model it kept on disk, and a server SIGKILLed mid-run
whose interrupted round is run again from the sites' models of the round before."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest

from quorum.client.gossip_models import GossipModels
from quorum.wire import blobs
from tests.e2e.cli import TASK, Deployment, heart_disease_sim, run_settings
from tests.integration.test_gossip_rounds import SITES, expected


def gossip_settings(**overrides: Any) -> dict[str, Any]:
    settings = {
        "mode": "gossip",
        "topology": "exponential",
        "min_fit_sites": 4,
        "min_available_sites": 4,
        "gossip_stage_timeout_s": 10.0,
    }
    return run_settings(**{**settings, **overrides})


def kept_value(d: Deployment, site: str, run_id: str, round_no: int) -> np.ndarray:
    kept = GossipModels(d.root / "keys" / f"{site}.gossip").latest_before(run_id, round_no + 1)
    assert kept is not None and kept[0] == round_no
    return blobs.as_flat(kept[1], blobs.read_layout(kept[1]))


@pytest.mark.slow
def test_gossip_heart_disease_sim(tmp_path: pathlib.Path) -> None:
    gossip = ["run.mode=gossip", "run.strategy=fedavg", "run.topology=exponential", "run.rounds=4"]
    done, report = heart_disease_sim(tmp_path, *[x for s in gossip for x in ("--set", s)])
    assert report["status"] == "completed"
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3, 4]
    for row in report["rounds"]:
        gossip_row = row["gossip"]
        assert gossip_row["consensus_distance"] > 0
        assert gossip_row["skipped_pairs"] == 0
        assert set(gossip_row["site_accuracy"]) == {"cleveland", "hungarian", "switzerland", "va"}
    assert report["final"]["accuracy_mean_sites"] > 0.6
    assert "consensus" in done.stdout  # the table has the column (its header may wrap)
    assert (tmp_path / "report.png").stat().st_size > 0


@pytest.mark.slow
def test_gossip_site_killed_mid_run_resumes_from_its_kept_model(tmp_path: pathlib.Path) -> None:
    d = Deployment(tmp_path, None)
    try:
        d.start_server()
        for name in ("a", "b", "d"):
            d.start_site(name, f"delta={SITES[name]},n=10,sleep=0.5")
        key = d.keygen_and_add("c")
        site_args = ["--server", d.address, "--site-key", str(key), "--task", TASK]
        site_args += ["--data", f"delta={SITES['c']},n=10,sleep=0.5", "--device", "cpu"]
        victim = d.start_agent("site-c", *site_args, "--insecure", "--crash-at", "3:gossip-mix")
        d.wait_connected({"a", "b", "c", "d"})
        # round 3 goes on without c; round 4 waits for its restarted process
        d.submit(gossip_settings(rounds=6, min_fit_sites=3, min_available_sites=4))
        victim.process.wait(timeout=60)  # it SIGKILLs itself after sending in round 3
        d.start_agent("site-c-restarted", *site_args, "--insecure")
        run = d.wait_run(timeout=90)
        third = d.get(f"/api/v1/runs/{run['id']}/rounds/3")
        fits = {p["site"]: p["status"] for p in third["participants"] if p["kind"] == "fit"}
        assert fits["c"] in ("lost", "timed_out") and fits["a"] == "ok"
        log = (tmp_path / "logs" / "site-c-restarted.log").read_text()
        # The restarted agent started from its round-2 model, kept on disk by the killed one.
        assert f"event=gossip_resume run_id={run['id']} from_round=2" in log
        last = d.get(f"/api/v1/runs/{run['id']}/rounds/6")
        assert {p["site"] for p in last["participants"] if p["status"] == "ok"} == set(SITES)
        kept_value(d, "c", run["id"], 6)
    finally:
        d.stop()


@pytest.mark.slow
def test_gossip_server_killed_mid_round_reruns_it_from_the_sites_models(
    tmp_path: pathlib.Path,
) -> None:
    d = Deployment(tmp_path, gossip_settings(rounds=4))
    try:
        server = d.start_server()
        hold = d.root / "hold"  # the sites hold their round-3 fits until the server is killed
        hold.touch()
        for name, delta in SITES.items():
            d.start_site(name, f"delta={delta},n=10,sleep=0.2,hold={hold},hold_from=3")
        d.kill_server_in_round(server, 3, hold)
        d.start_server()  # same config and state; the sites rejoin on their own
        run = d.wait_run(timeout=120)
        attempts: dict[int, list[str]] = {}
        for r in d.get(f"/api/v1/runs/{run['id']}/rounds"):
            attempts.setdefault(r["round"], []).append(r["status"])
        cut = [n for n, a in attempts.items() if len(a) > 1]
        assert len(cut) == 1 and attempts[cut[0]] == ["aborted", "completed"], attempts
        # Every site went through every round exactly once: the models prove it.
        want = expected(4)
        for name in SITES:
            np.testing.assert_allclose(kept_value(d, name, run["id"], 4), want[name], atol=1e-5)
    finally:
        d.stop()
