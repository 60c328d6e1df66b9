"""`quorum sim --byzantine` through the command line: a fifth of the sites flip and boost their
updates; FedAvg follows them, the coordinate median does not."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import pytest
import tomli_w

from quorum.server.checkpoints import Checkpoints
from tests.e2e.cli import TASK, quorum

ROUNDS = 2


def _attacked_run(tmp_path: pathlib.Path, strategy: str) -> tuple[dict[str, Any], np.ndarray]:
    out = tmp_path / strategy
    config = {
        "sim": {
            "num_sites": 20,
            "site_data": "delta=0.25,n=1",
            "timeout_s": 120,
            "output_dir": str(out),
            "byzantine": ["0.2=signflip:20"],
        },
        # Every site in every round: the hostile four are always in the cohort.
        "run": {
            "task": TASK,
            "strategy": strategy,
            "rounds": ROUNDS,
            "min_fit_sites": 20,
            "max_fit_sites": 20,
            "fraction_evaluate": 0.1,
            "wait_timeout_s": 60,
            "round_timeout_s": 60,
        },
    }
    path = tmp_path / f"{strategy}.toml"
    path.write_text(tomli_w.dumps(config))
    report_path = out / "report.json"
    done = quorum("sim", "--config", str(path), "--report", str(report_path), timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "byzantine: 4 hostile site(s) (signflip:20)" in done.stderr
    report: dict[str, Any] = json.loads(report_path.read_text())
    model, _ = Checkpoints(out / "work" / "state" / "checkpoints").open(report["run_id"], ROUNDS)
    return report, model.flat()


@pytest.mark.parametrize(
    ("strategy", "per_round"),
    [
        # 16 honest sites add 0.25, 4 hostile ones send -20 × 0.25: FedAvg's mean goes backwards.
        ("fedavg", (16 * 0.25 - 4 * 5.0) / 20),
        ("fedmedian", 0.25),
    ],
)
def test_a_fifth_of_hostile_sites_break_fedavg_not_the_median(
    tmp_path: pathlib.Path, strategy: str, per_round: float
) -> None:
    report, model = _attacked_run(tmp_path, strategy)
    assert report["status"] == "completed"
    assert sorted(report["byzantine"].values()) == ["signflip:20"] * 4
    assert set(report["byzantine"]) <= set(report["sites"])
    np.testing.assert_allclose(model, ROUNDS * per_round, rtol=1e-5)
