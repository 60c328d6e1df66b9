"""The sim's pooled line: the job's spec from `[sim] baseline`, the report from the job."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from quorum import config
from quorum.errors import ConfigError
from quorum.sim import pooled, report

HEART_SIM = pathlib.Path(__file__).resolve().parents[2] / "examples/heart_disease/sim.toml"


def test_spec_is_the_runs_task_with_the_sim_settings() -> None:
    sim = config.load(config.SimFile, HEART_SIM, ["sim.baseline.nproc=2", "run.seed=7"])
    spec = pooled.spec(sim)
    assert (spec.task, spec.data, spec.seed, spec.device) == (sim.run.task, "pooled", 7, "cpu")
    assert (spec.engine, spec.nproc, spec.epochs, spec.steps) == ("ddp", 2, 50, None)
    own = config.load(config.SimFile, HEART_SIM, ["sim.baseline.data=cleveland"])
    assert pooled.spec(own).data == "cleveland"
    with pytest.raises(ConfigError, match="run's task"):
        pooled.spec(config.load(config.SimFile, HEART_SIM, ["sim.baseline.task=m:other"]))
    with pytest.raises(ConfigError, match="zero_stage"):
        pooled.spec(config.load(config.SimFile, HEART_SIM, ["sim.baseline.zero_stage=2"]))


def job(status: str, result: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "baseline-abc",
        "status": status,
        "spec": {"engine": "ddp", "nproc": 1, "steps": None, "epochs": 50},
        "result": result,
        "error": None if status == "completed" else "the job exited with status 1",
    }


def test_section_and_report_from_a_completed_job(tmp_path: pathlib.Path) -> None:
    result = {
        "engine": "ddp",
        "train_loss": 0.4,
        "eval_loss": 0.5,
        "eval_accuracy": 0.79,
        "eval_metrics": {"loss": 0.5, "accuracy": 0.79, "accuracy_mean_sites": 0.73},
        "peak_memory_bytes": [123],
        "samples_per_s": 900.0,
        "tokens_per_s": None,
        "wall_s": 12.0,
    }
    section = pooled.section(job("completed", result), {"a": {"accuracy_mean_sites": 0.6}})
    assert section is not None
    assert section["pooled"]["accuracy_mean_sites"] == 0.73
    assert section["pooled"]["eval_accuracy"] == 0.79 and "tokens_per_s" not in section["pooled"]
    assert section["pooled_job"]["peak_memory_bytes"] == [123]
    assert report._pooled_accuracy(section) == 0.73
    out = {
        "run_id": "run-1",
        "seed": 0,
        "strategy": "fedavg",
        "status": "completed",
        "rounds": [],
        "baselines": section,
    }
    report.plot(out, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert report.table(out).row_count == 2  # pooled, local a


def test_a_failed_job_leaves_no_pooled_line(tmp_path: pathlib.Path) -> None:
    section = pooled.section(job("failed", None), None)
    assert section is not None and section["pooled"] is None and section["local"] == {}
    assert section["pooled_job"]["error"] == "the job exited with status 1"
    assert report._pooled_accuracy(section) is None
    out = {
        "run_id": "run-1",
        "seed": 0,
        "strategy": "fedavg",
        "status": "completed",
        "rounds": [],
        "baselines": section,
    }
    report.plot(out, tmp_path / "plot.png")
    assert pooled.section(None, None) is None


@pytest.mark.parametrize("example", ["heart_disease", "shakespeare"])
def test_the_bundled_sim_examples_load_and_name_a_valid_pooled_job(example: str) -> None:
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / example / "sim.toml"
    sim = config.load(config.SimFile, path)
    job = pooled.spec(sim)
    assert job.task == sim.run.task and job.data == "pooled"
