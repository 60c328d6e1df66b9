"""Flower apps run unchanged on Quorum: each test Flower app (tests/flower_apps) serves two real
site agents (`quorum client run --flower-app`) of a real server running FedAvg, and reaches the
accuracy it reaches under Flower's own simulation (Ray backend) in the same test."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import tomli_w

from tests.e2e.cli import REPO, Deployment, quorum, run_settings

ROUNDS = 5
LR = 0.1
TASK = "tests.flower_apps.quorum_task:task"
ACCURACY = {"numpy": "accuracy", "message": "eval_acc"}  # the metric each app reports


def flower_simulation(kind: str, out: pathlib.Path) -> dict[str, float]:
    """The app's last-round evaluation under Flower's simulation, in a process group of its
    own so that Ray's processes end with it, whatever happens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.flower_apps.flower_sim", kind, str(ROUNDS), str(LR), out],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = process.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, err[-3000:]
    result: dict[str, float] = json.loads(out.read_text())
    return result


@pytest.mark.slow  # about 40 s: a federation, then Flower's simulation with Ray
@pytest.mark.parametrize("kind", ["numpy", "message"])
def test_a_flower_app_trains_on_quorum_as_under_flowers_simulation(
    deployment: Deployment, kind: str
) -> None:
    d = deployment
    d.run = run_settings(task=TASK, rounds=ROUNDS, site_config={"lr": LR, "local-epochs": 1})
    d.start_server()
    for partition in range(2):
        key = d.keygen_and_add(f"flower-{partition}")
        d.start_agent(
            f"site-flower-{partition}",
            *("--server", d.address, "--site-key", str(key), "--insecure"),
            *("--task", TASK, "--flower-app", f"tests.flower_apps.{kind}_app:app"),
            *("--data", f"partition-id={partition} num-partitions=2"),
        )
    run = d.wait_run(timeout=120)
    assert run["rounds_completed"] == ROUNDS
    metric = ACCURACY[kind]
    accuracies = []
    for round_no in range(1, ROUNDS + 1):
        detail = d.get(f"/api/v1/runs/{run['id']}/rounds/{round_no}")
        assert detail["status"] == "completed"
        fitted = {p["site"] for p in detail["participants"] if p["kind"] == "fit"}
        assert fitted == {"flower-0", "flower-1"}
        accuracies.append(detail["metrics"]["evaluate"][metric])
    assert accuracies[-1] >= 0.72, accuracies

    flower = flower_simulation(kind, d.root / "flower.json")
    assert (
        abs(flower[metric] - accuracies[-1]) <= 0.011
    )  # two of 193 test examples, (flower, accuracies)


@pytest.mark.parametrize("secagg", [False, True])
def test_a_flower_app_site_in_a_quorum_sim_beside_native_sites(
    tmp_path: pathlib.Path, secagg: bool
) -> None:
    """The legacy app (its arrays matched to the native task's by order) serves the va
    hospital of the heart-disease federation; cleveland and hungarian are native sites; with
    and without SecAgg+."""
    config = {
        "sim": {"timeout_s": 240, "output_dir": str(tmp_path / "out"), "baselines": False},
        "run": {
            "name": "flower-beside-native",
            "task": "examples.heart_disease.task:task",
            "rounds": 4,
            "min_fit_sites": 3,
            "min_available_sites": 3,
            "wait_timeout_s": 60,
            "round_timeout_s": 60,
            "site_config": {"lr": LR, "local-epochs": 1, "local_epochs": 1, "batch_size": 8},
            "secagg": {"enabled": secagg},
        },
        "site": {"device": "cpu"},
        "sites": [
            {"name": "cleveland", "data": "cleveland"},
            {"name": "hungarian", "data": "hungarian"},
            {
                "name": "flower-va",
                "data": "partition-id=3 num-partitions=4",
                "flower_app": "tests.flower_apps.numpy_app:app",
            },
        ],
    }
    path = tmp_path / "sim.toml"
    path.write_text(tomli_w.dumps(config))
    report = tmp_path / "report.json"
    done = quorum("sim", "--config", str(path), "--report", str(report), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["status"] == "completed" and len(result["rounds"]) == 4
    for row in result["rounds"]:
        # 199 + 172 + 85 training examples: va's came through the Flower app, whose fit reports
        # `train_loss` (the native sites report `loss`).
        assert row["fit"]["num_examples"] == 456 and row["fit"]["num_sites"] == 3
        assert "train_loss" in row["fit"] and row["evaluate"]["num_sites"] == 3
        assert bool(row["secagg"] and row["secagg"]["recovered"]) == secagg
    assert result["final"]["accuracy_pooled_test"] > 0.7
