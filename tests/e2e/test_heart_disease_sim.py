"""`quorum sim` on the bundled four-hospital heart-disease federation, as the README runs it."""

from __future__ import annotations

import pathlib

import pytest

from tests.e2e.cli import heart_disease_sim


@pytest.mark.slow
def test_heart_disease_simulation_writes_report_and_plot(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    done, result = heart_disease_sim(out, "--seed", "43", "--set", "run.rounds=8", baselines=True)
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
    png = (out / "report.json").with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "acc (mean of sites)" in done.stdout and "pooled" in done.stdout
