"""Async (FedBuff) runs through the CLI with real processes: a server SIGKILLed mid-buffer and
restarted, a site SIGKILLed as it starts a fit and restarted, and `quorum sim` with a slow site.

The vector task's update is the site's delta whatever version it trained on, so the final model
must equal the sum over the stored server steps of their staleness-weighted buffers: an update
applied twice, or one from a discarded buffer, would show."""

from __future__ import annotations

import pathlib
import re
import signal
import sqlite3
from typing import Any

import numpy as np
import pytest

from quorum.aggregation.fedbuff import staleness_weight
from quorum.privacy.dp.accounting import epsilon
from quorum.server.checkpoints import Checkpoints
from tests.e2e.cli import TASK, Deployment, heart_disease_sim, run_settings

DELTAS = {"a": 1.0, "b": 2.0, "c": -1.0}


def _async(**overrides: Any) -> dict[str, Any]:
    return run_settings(
        **{
            "mode": "async",
            "rounds": 6,
            "buffer_size": 2,
            "min_fit_sites": 1,
            "min_available_sites": 3,
            **overrides,
        }
    )


def _check_model(d: Deployment, run_id: str, rounds: int) -> list[dict[str, Any]]:
    """Asserts the final model is exactly the stored steps' buffers; returns the rounds."""
    expected = 0.0
    details = [d.get(f"/api/v1/runs/{run_id}/rounds/{r}") for r in range(1, rounds + 1)]
    for detail in details:
        assert detail["status"] == "completed"
        applied = [
            p for p in detail["participants"] if p["kind"] == "fit" and p["status"] == "accepted"
        ]
        assert len(applied) == 2, detail
        expected += sum(staleness_weight(p["staleness"], 0.5) * DELTAS[p["site"]] for p in applied)
    model, _ = Checkpoints(d.state_dir / "checkpoints").open(run_id, rounds)
    for value in model.params().values():
        np.testing.assert_allclose(value, expected / 2, rtol=1e-5)
    return details


@pytest.mark.slow
def test_server_killed_mid_buffer_discards_it_and_the_run_finishes(deployment: Deployment) -> None:
    d = deployment
    d.run = _async()
    server = d.start_server()
    for name, delta in DELTAS.items():
        d.start_site(name, f"delta={delta},n=1,sleep=0.6")

    def buffer_half_full() -> bool:
        run = d.run_record()
        if not run or run["rounds_completed"] < 2:
            return False
        detail = d.get(f"/api/v1/runs/{run['id']}/rounds/{run['rounds_completed'] + 1}")
        return any(p["status"] == "accepted" for p in detail["participants"])

    d.wait(buffer_half_full, 60, "a half-full buffer after two steps")
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    d.start_server()  # same state; the sites rejoin on their own
    run = d.wait_run(timeout=120)
    assert run["rounds_completed"] == 6
    rounds = d.get(f"/api/v1/runs/{run['id']}/rounds")
    aborted = [r for r in rounds if r["status"] == "aborted"]
    assert len(aborted) == 1 and aborted[0]["round"] >= 3
    match = re.search(
        r"with (\d+) of 2 update\(s\) buffered; discarded", aborted[0]["abort_reason"]
    )
    assert match, aborted[0]["abort_reason"]
    # the reason counts the updates that attempt had buffered when the server died
    with sqlite3.connect(d.state_dir / "quorum.db") as db:
        (held,) = db.execute(
            "SELECT COUNT(*) FROM participations WHERE run_id = ? AND round = ? AND attempt = ? "
            "AND kind = 'fit' AND status = 'accepted'",
            (run["id"], aborted[0]["round"], aborted[0]["attempt"]),
        ).fetchone()
    assert int(match.group(1)) == held
    _check_model(d, run["id"], 6)


@pytest.mark.slow
def test_site_killed_as_it_starts_a_fit_rejoins_after_a_restart(deployment: Deployment) -> None:
    d = deployment
    d.run = _async()
    # a and b hold their fits from round 3 on until c, restarted, has an update in a step: else
    # they could finish the run while c's new process is still starting
    hold = d.root / "hold"
    hold.touch()
    held = f"sleep=0.3,hold={hold},hold_from=3"
    d.start_server()
    d.start_site("a", f"delta=1.0,n=1,{held}")
    d.start_site("b", f"delta=2.0,n=1,{held}")
    key = d.keygen_and_add("c")
    args = ["--server", d.address, "--site-key", str(key), "--task", TASK, "--insecure"]
    data = ["--data", "delta=-1.0,n=1,sleep=0.3", "--device", "cpu"]
    victim = d.start_agent("site-c", *args, *data, "--crash-at", "3:fit")
    victim.process.wait(timeout=60)
    assert victim.process.returncode == -signal.SIGKILL
    d.start_agent("site-c-restarted", *args, *data)

    def restarted_c_fed_a_step() -> bool:
        run = d.run_record()
        assert run is not None
        # offered in round r - staleness: the first c crashed at its first offer of round >= 3,
        # so an update offered in round 3 or later is the restarted process's
        return any(
            p["site"] == "c" and p["status"] == "accepted" and r - p["staleness"] >= 3
            for r in range(3, min(run["rounds_completed"] + 1, 6) + 1)  # 6 steps: no round 7
            for p in d.get(f"/api/v1/runs/{run['id']}/rounds/{r}")["participants"]
            if p["kind"] == "fit"
        )

    d.wait(restarted_c_fed_a_step, 60, "an accepted update of the restarted c")
    hold.unlink()
    run = d.wait_run(timeout=120)
    _check_model(d, run["id"], 6)


@pytest.mark.slow
def test_async_sim_with_a_slow_site(tmp_path: pathlib.Path) -> None:
    _, report = heart_disease_sim(
        tmp_path,
        "--slow-site",
        "cleveland=3",
        "--set",
        "run.mode=async",
        "--set",
        "run.strategy=fedavg",
        "--set",
        "run.server_learning_rate=1.0",
        "--set",
        "run.buffer_size=3",
        "--set",
        "run.rounds=8",
    )
    assert report["mode"] == "async" and report["status"] == "completed"
    assert [r["round"] for r in report["rounds"]] == list(range(1, 9))
    times = [r["wall_time_s"] for r in report["rounds"]]
    assert times == sorted(times)
    assert all(r["accuracy_mean_sites"] is not None for r in report["rounds"])
    assert any(r["staleness_max"] for r in report["rounds"])  # the slow site's updates are late
    assert report["final"]["accuracy_mean_sites"] > 0.6


@pytest.mark.slow
def test_async_sim_with_central_dp_accounts_every_step(tmp_path: pathlib.Path) -> None:
    z = 0.3
    _, report = heart_disease_sim(
        tmp_path,
        *("--set", "run.mode=async", "--set", "run.strategy=fedavg"),
        *("--set", "run.buffer_size=2", "--set", "run.rounds=4"),
        *("--set", "run.central_dp.enabled=true", "--set", f"run.central_dp.noise_multiplier={z}"),
    )
    assert report["mode"] == "async" and report["status"] == "completed"
    central = report["privacy"]["central"]
    assert central["mode"] == "central" and central["noise_multiplier"] == z
    # one Gaussian release per server step, as the accountant computes it for r steps
    assert [e["round"] for e in central["epsilon"]] == [1, 2, 3, 4]
    for e in central["epsilon"]:
        assert e["epsilon"] == pytest.approx(epsilon("rdp", 1e-5, [(z, 1.0, e["round"])]))
