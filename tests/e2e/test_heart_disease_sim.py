"""`quorum sim` on the bundled four-hospital heart-disease federation, as the README runs it."""

from __future__ import annotations

import pathlib

import pytest

from tests.e2e.cli import heart_disease_sim


@pytest.mark.slow
def test_heart_disease_simulation_writes_report_and_plot(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    # 10 epochs for the pooled job, not the example's 50 (FLamby's), to bound the test's time.
    done, result = heart_disease_sim(
        out,
        "--seed",
        "43",
        "--set",
        "run.rounds=8",
        "--set",
        "sim.baseline.epochs=10",
        baselines=True,
    )
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
    # The pooled line is the server's baseline job of the run's task (the large-model track).
    pooled, job = result["baselines"]["pooled"], result["baselines"]["pooled_job"]
    assert job["id"].startswith("baseline-") and job["status"] == "completed"
    assert (job["engine"], job["nproc"], job["epochs"]) == ("ddp", 1, 10)
    assert len(job["peak_memory_bytes"]) == 1
    assert pooled["accuracy_mean_sites"] > 0.6 and pooled["accuracy_pooled_test"] > 0.6
    assert pooled["eval_loss"] > 0 and pooled["samples_per_s"] > 0
    png = (out / "report.json").with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "acc (mean of sites)" in done.stdout and "pooled" in done.stdout
