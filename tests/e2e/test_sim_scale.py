"""`quorum sim` at scale through its command line: 200 generated sites on the site hosts, with
secure aggregation and sites vanishing mid-protocol, and as an async (FedBuff) run; a site's
exception reaches the console; a task without the centralised interface runs without the
pooled line."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import pytest
import tomli_w

from quorum.privacy.secagg import error_bound
from quorum.server.checkpoints import Checkpoints
from tests.e2e.cli import TASK, quorum

pytestmark = pytest.mark.slow


def _sim(tmp_path: pathlib.Path, run: dict[str, Any], **sim: Any) -> pathlib.Path:
    """A sim.toml of 200 vector sites; `sim` settings replace those, None leaves one out."""
    options = {
        "num_sites": 200,
        "site_data": "delta=0.25,n=1",
        "timeout_s": 400,
        "output_dir": str(tmp_path / "out"),
        **sim,
    }
    config = {
        "sim": {key: value for key, value in options.items() if value is not None},
        "run": {
            "task": TASK,
            "wait_timeout_s": 60,
            "round_timeout_s": 120,
            "fraction_evaluate": 0.1,
            **run,
        },
    }
    path = tmp_path / "sim.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def _final_model(tmp_path: pathlib.Path, report: dict[str, Any]) -> np.ndarray:
    checkpoints = Checkpoints(tmp_path / "out" / "work" / "state" / "checkpoints")
    model, _ = checkpoints.open(report["run_id"], len(report["rounds"]))
    return model.flat()


def _run(tmp_path: pathlib.Path, config: pathlib.Path, *flags: str) -> dict[str, Any]:
    report = tmp_path / "report.json"
    done = quorum("sim", "--config", str(config), "--report", str(report), *flags, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def test_two_hundred_sites_aggregate_securely_while_some_vanish(tmp_path: pathlib.Path) -> None:
    config = _sim(
        tmp_path,
        {
            "rounds": 2,
            "max_fit_sites": 40,
            "min_fit_sites": 30,
            "secagg": {"enabled": True, "stage_timeout_s": 30},
        },
    )
    # Vanishing at share-keys: a dropout that the survivors' shares must cover; each of these
    # sites vanishes the first time it is in a cohort.
    kills = [f"site-{i:04d}@1:share-keys" for i in range(0, 200, 20)]
    report = _run(tmp_path, config, *(f for k in kills for f in ("--kill-site", k)))
    assert report["status"] == "completed" and len(report["sites"]) == 200
    assert len(report["hosts"]) == 2 and sum(len(h["sites"]) for h in report["hosts"]) == 200
    vanished = {d["site"] for r in report["rounds"] for d in r["secagg"]["dropped"]}
    crashed = {s for h in report["hosts"] for s in h["crashed"]}
    assert vanished == crashed and vanished <= {k.split("@")[0] for k in kills}
    for row in report["rounds"]:
        assert row["secagg"]["recovered"] is True
        assert row["num_sites"] == row["secagg"]["survivors"] >= 30
    # Every site adds 0.25 with the same weight: whoever took part, two rounds give 0.5, up to
    # the fixed-point error of each round's sum (each weight share is quantised; the mean is
    # that error scaled by max_weight / total weight).
    error = sum(
        error_bound(8.0, 20, r["num_sites"]) * 1000 / r["num_sites"] for r in report["rounds"]
    )
    np.testing.assert_allclose(_final_model(tmp_path, report), 0.5, atol=error)


def test_two_hundred_sites_in_an_async_run(tmp_path: pathlib.Path) -> None:
    config = _sim(
        tmp_path,
        {
            "mode": "async",
            "rounds": 5,
            "buffer_size": 20,
            "max_concurrency": 40,
            "min_available_sites": 200,
            "staleness_exponent": 0.0,
        },
    )
    report = _run(tmp_path, config)
    assert report["status"] == "completed" and len(report["rounds"]) == 5
    assert all(r["fit"]["num_updates"] == 20 for r in report["rounds"])
    assert max(r["staleness_max"] for r in report["rounds"]) >= 1  # 40 train, 20 per step
    # With α = 0 each step adds the mean delta, 0.25, whatever the staleness.
    np.testing.assert_allclose(_final_model(tmp_path, report), 5 * 0.25, rtol=1e-5)


def test_a_site_error_reaches_the_console_and_fails_the_run_at_once(
    tmp_path: pathlib.Path,
) -> None:
    config = _sim(
        tmp_path,
        {"rounds": 3, "min_fit_sites": 4},
        num_sites=4,
        site_data="fail=the site's code is broken",
    )
    done = quorum("sim", "--config", str(config), timeout=300)
    assert done.returncode != 0
    console = " ".join(done.stderr.split())  # rich wraps lines at the console's width
    # The site's error, the end of its traceback, and where its log is; once in full.
    error = "failed its fit task of round 1: RuntimeError: the site's code is broken"
    assert console.count(error) == 1
    assert console.count("raise RuntimeError(self.fail)") == 1
    assert "log: " in console and "/logs/host-" in console
    assert console.count("(the same error)") == 3
    # The run failed on round 1's first attempt, not after five.
    assert "failed its fit with the same error" in console
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(a["round"], a["attempt"]) for a in report["aborted_rounds"]] == [(1, 1)]


def test_a_task_without_a_centralised_interface_runs_without_the_pooled_line(
    tmp_path: pathlib.Path,
) -> None:
    config = _sim(tmp_path, {"rounds": 1, "min_fit_sites": 4}, num_sites=4, baselines=True)
    done = quorum("sim", "--config", str(config), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("has no centralised-baseline interface") == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "completed" and report["baselines"] is None


def test_every_speaking_role_of_tiny_shakespeare_is_a_site(tmp_path: pathlib.Path) -> None:
    """The natural partition of examples/shakespeare/sim-speakers.toml, in a small setting: one
    round of 4 of the 308 speakers (the full run's figures are in the README)."""
    report = tmp_path / "report.json"
    done = quorum(
        "sim",
        "--config",
        "examples/shakespeare/sim-speakers.toml",
        "--report",
        str(report),
        *("--set", f"sim.output_dir={tmp_path / 'out'}", "--set", "sim.baselines=false"),
        *("--set", "run.rounds=1", "--set", "run.max_fit_sites=4", "--set", "run.min_fit_sites=4"),
        *("--set", "run.fraction_evaluate=0.02", "--set", "run.site_config.local_steps=1"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["status"] == "completed" and len(result["sites"]) == 308
    partition = result["partition"]
    assert partition["kind"] == "natural" and len(partition["sites"]) == 308
    owners = [s["owner"] for s in partition["sites"]]
    assert len(set(owners)) == 308 and owners[0] == "First Citizen"
    # Each site's label histogram has exactly its own speaker's speeches.
    assert all(sum(1 for c in s["labels"] if c) == 1 for s in partition["sites"])
    assert result["rounds"][0]["fit"]["num_sites"] == 4


def test_a_partitioned_sim_reports_its_split_and_writes_tensorboard_scalars(
    tmp_path: pathlib.Path,
) -> None:
    """[sim.partition] over a Partitionable task, [sim] tensorboard and table_every, through
    the CLI: the split's sizes and histograms in the report and its plot, the rounds' scalars
    as TensorBoard events, one round in two in the printed table."""
    config = _sim(
        tmp_path,
        {"task": "tests.vector_task:labelled", "rounds": 4, "min_fit_sites": 6},
        num_sites=6,
        site_data=None,
        data="sixty",
        partition={"kind": "dirichlet", "alpha": 1.0, "min_size": 2},
        tensorboard=str(tmp_path / "tb"),
        table_every=2,
    )
    done = quorum("sim", "--config", str(config), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    split = report["partition"]
    assert split["kind"] == "dirichlet" and len(split["sites"]) == 6
    assert sum(s["size"] for s in split["sites"]) == 60
    assert all(sum(s["labels"]) == s["size"] >= 2 for s in split["sites"])
    # Each site trains as n = its size: round 1's examples are the whole data set.
    assert report["rounds"][0]["fit"]["num_examples"] == 60
    assert (tmp_path / "out" / "report-partition.png").read_bytes()[:4] == b"\x89PNG"
    events = list((tmp_path / "tb" / report["run_id"]).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "one round in 2; all 4 in the report" in " ".join(done.stdout.split())
