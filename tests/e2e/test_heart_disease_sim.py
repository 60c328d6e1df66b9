"""`quorum sim` on the bundled four-hospital heart-disease federation, as the README runs it."""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.e2e.cli import quorum


@pytest.mark.slow
def test_heart_disease_simulation_writes_report_and_plot(tmp_path: pathlib.Path) -> None:
    report = tmp_path / "report.json"
    done = quorum(
        "sim",
        "--config",
        "examples/heart_disease/sim.toml",
        "--report",
        str(report),
        "--seed",
        "43",
        "--set",
        f"sim.output_dir={tmp_path / 'out'}",
        "--set",
        "run.rounds=8",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["status"] == "completed" and result["seed"] == 43
    assert [r["round"] for r in result["rounds"]] == list(range(1, 9))
    for row in result["rounds"]:
        assert 0 <= row["accuracy_mean_sites"] <= 1 and row["loss"] > 0
    times = [r["wall_time_s"] for r in result["rounds"]]
    assert times == sorted(times)
    # A federated logistic regression beats chance on these hospitals after 8 rounds.
    assert result["final"]["accuracy_mean_sites"] > 0.6
    assert result["final"]["accuracy_pooled_test"] > 0.6
    assert set(result["baselines"]["local"]) == {"cleveland", "hungarian", "switzerland", "va"}
    assert result["baselines"]["pooled"]["accuracy_mean_sites"] > 0.6
    png = report.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "acc (mean of sites)" in done.stdout and "pooled" in done.stdout
