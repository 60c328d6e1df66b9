"""Site-level DP through real processes: a site agent started from its site config file, and a
site's privacy accountant that survives the SIGKILL and restart of its agent."""

from __future__ import annotations

import json
import pathlib
import signal
from typing import Any

import pytest

from quorum.privacy.dp import DPSettings, PrivacyLedger
from tests.e2e.cli import Deployment, quorum, run_settings

HEART = "examples.heart_disease.task:task"
LOCAL_STEPS = 5
"""Optimiser steps per fit: few, so that rounds take well under a second."""


def heart_run(**overrides: Any) -> dict[str, Any]:
    return run_settings(
        task=HEART,
        fraction_evaluate=0.0,  # only fits spend privacy; evaluation would only cost time
        site_config={"local_steps": LOCAL_STEPS, "batch_size": 8, "lr": 0.01},
        **overrides,
    )


def site_fits(d: Deployment, run_id: str, rounds: int, site: str) -> dict[int, dict[str, Any]]:
    """`site`'s fit participation in each round, from the admin API."""
    fits = {}
    for round_no in range(1, rounds + 1):
        detail = d.get(f"/api/v1/runs/{run_id}/rounds/{round_no}")
        (fits[round_no],) = [
            p for p in detail["participants"] if p["kind"] == "fit" and p["site"] == site
        ]
    return fits


def ledger_run(path: pathlib.Path, run_id: str) -> dict[str, Any]:
    runs: dict[str, Any] = json.loads(path.read_text())["runs"]
    assert list(runs) == [run_id]
    return dict(runs[run_id])


def ledger_steps(run: dict[str, Any]) -> int:
    return sum(int(steps) for _, _, steps in run["history"])


def test_an_agent_runs_from_its_site_config_with_its_own_budget(deployment: Deployment) -> None:
    d = deployment
    d.run = heart_run(rounds=2, min_fit_sites=1, min_available_sites=1)
    d.start_server()
    key = d.keygen_and_add("cleveland")  # root/keys/cleveland.key
    config = key.parent / "site.toml"
    config.write_text(
        "[client]\n"
        'server = "127.0.0.1:1"\n'  # wrong on purpose: the --server flag must win
        'site_key = "cleveland.key"\n'  # relative: read from this file's folder
        f'task = "{HEART}"\n'
        'data = "cleveland"\n'
        'device = "cpu"\n'
        "insecure = true\n"
        "[dp]\n"
        "epsilon = 1.0\n"  # --set lowers it to 0.5
        "delta = 1e-5\n"
        'ledger = "ledgers/cleveland.privacy.json"\n'
    )
    # The agent runs in the test's working directory, not in the config's folder.
    d.start_agent(
        "site-cleveland",
        "--config",
        str(config),
        "--server",
        d.address,
        "--set",
        "dp.epsilon=0.5",
    )
    run = d.wait_run(timeout=90)
    assert run["rounds_completed"] == 2
    fits = site_fits(d, run["id"], 2, "cleveland")
    assert [fits[n]["status"] for n in (1, 2)] == ["accepted", "accepted"]
    metrics = [fits[n]["metrics"] for n in (1, 2)]
    assert all(m["dp_epsilon_budget"] == 0.5 and m["dp_delta"] == 1e-5 for m in metrics)
    assert 0 < metrics[0]["dp_epsilon"] < metrics[1]["dp_epsilon"] <= 0.5 * (1 + 1e-9)
    # The ledger is where the file says, relative to the file; not beside the key.
    ledger = ledger_run(key.parent / "ledgers" / "cleveland.privacy.json", run["id"])
    assert ledger["settings"]["epsilon"] == 0.5
    assert ledger_steps(ledger) == 2 * LOCAL_STEPS
    assert not key.with_suffix(".privacy.json").exists()


def test_a_site_config_missing_required_settings_is_refused(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[client]\nserver = "127.0.0.1:1"\nsite_key = "a.key"\n')
    done = quorum("client", "run", "--config", str(config), "--data", "cleveland")
    assert done.returncode == 2
    assert "client.task" in done.stderr and "--task" in done.stderr
    assert "client.data" not in done.stderr  # given as a flag
    assert "[client]" in done.stderr


@pytest.mark.slow
def test_the_privacy_accountant_survives_a_sigkill_and_restart_of_the_agent(
    deployment: Deployment,
) -> None:
    d = deployment
    rounds, budget = 4, 1.0
    # Every round may go on with one site, but starts only when both are connected: the round
    # after the kill goes on without the victim, the next one waits for it to come back.
    d.run = heart_run(rounds=rounds, min_fit_sites=1, min_available_sites=2, wait_timeout_s=60.0)
    d.start_server()

    def agent_args(name: str) -> list[str]:
        key = d.root / "keys" / f"{name}.key"
        return [
            "--server",
            d.address,
            "--insecure",
            "--site-key",
            str(key),
            "--task",
            HEART,
            "--data",
            name,
            "--device",
            "cpu",
            "--dp-epsilon",
            str(budget),
        ]

    for name in ("cleveland", "hungarian"):
        d.keygen_and_add(name)
    d.start_agent("site-cleveland", *agent_args("cleveland"))
    # SIGKILL as round 3's fit task arrives, before any training: between rounds, right after
    # its round-2 update was accepted (a kill from outside could not be timed so exactly).
    victim = d.start_agent("site-hungarian", *agent_args("hungarian"), "--crash-at", "3:fit")
    assert victim.process.wait(timeout=90) == -signal.SIGKILL, victim.log_tail()

    ledger_path = d.root / "keys" / "hungarian.privacy.json"
    run_id = d.wait(d.run_record, 10, "the run")["id"]
    before = site_fits(d, run_id, 2, "hungarian")
    assert [before[n]["status"] for n in (1, 2)] == ["accepted", "accepted"]
    assert ledger_steps(ledger_run(ledger_path, run_id)) == 2 * LOCAL_STEPS

    d.start_agent("site-hungarian-restarted", *agent_args("hungarian"))  # same key, same ledger
    run = d.wait_run(timeout=90)
    assert run["rounds_completed"] == rounds

    fits = site_fits(d, run_id, rounds, "hungarian")
    assert {n: f["status"] for n, f in fits.items()} == {
        1: "accepted",
        2: "accepted",
        3: "lost",  # offered to the agent that died
        4: "accepted",  # by the restarted agent
    }
    trained = [1, 2, 4]
    epsilons = [fits[n]["metrics"]["dp_epsilon"] for n in trained]
    # ε never decreases (the restart continued from the stored accountant, each fit adds to
    # it) and never exceeds the site's budget.
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] <= budget * (1 + 1e-9), epsilons
    assert all(fits[n]["metrics"]["dp_epsilon_budget"] == budget for n in trained)
    # The plan made at the run's first fit is reused, not recalibrated after the restart.
    sigmas = {fits[n]["metrics"]["dp_noise_multiplier"] for n in trained}
    assert len(sigmas) == 1, sigmas
    (sigma,) = sigmas

    ledger = ledger_run(ledger_path, run_id)
    # Nothing lost, nothing counted twice: three fits trained, of LOCAL_STEPS steps each.
    assert ledger_steps(ledger) == len(trained) * LOCAL_STEPS
    assert ledger["total_steps"] == rounds * LOCAL_STEPS  # planned once for the whole run
    assert ledger["noise_multiplier"] == sigma
    assert all(entry[0] == sigma for entry in ledger["history"])
    # The last ε the site reported is what its ledger's accountant says now.
    stored = PrivacyLedger(ledger_path, DPSettings(epsilon=budget, delta=1e-5)).spent(run_id)
    assert stored == pytest.approx(epsilons[-1], rel=1e-9)
