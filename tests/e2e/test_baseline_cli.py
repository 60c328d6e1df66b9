"""`quorum baseline run` as a user runs it: real torchrun jobs through the CLI."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from quorum.baseline.extra import missing_packages
from tests.e2e.cli import REPO, quorum

pytestmark = pytest.mark.slow


def test_heart_disease_pooled_baseline_with_ddp_on_two_ranks(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "heart"
    args = ["--task", "examples.heart_disease.task:task", "--nproc", "2", "--epochs", "3"]
    done = quorum("baseline", "run", *args, "--batch-size", "4", "--out", str(out), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "baseline result" in done.stdout and "eval accuracy" in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["tokens_per_s"] is None
    assert 0.6 < result["eval_accuracy"] <= 1.0
    assert "accuracy_mean_sites" in result["eval_metrics"]
    assert len(result["peak_memory_bytes"]) == len(result["state_bytes"]) == 2


@pytest.mark.skipif(bool(missing_packages("deepspeed")), reason="needs quorum-fl[llm]")
def test_gpt_with_deepspeed_zero2_on_two_ranks(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gpt"
    args = ["--task", "tests.baseline_tasks:tiny_gpt", "--data", "nanogpt", "--engine"]
    args += ["deepspeed", "--zero-stage", "2", "--nproc", "2", "--steps", "6", "--log-every", "2"]
    done = quorum("baseline", "run", *args, "--out", str(out), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tokens/s" in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert (result["engine"], result["zero_stage"], result["steps"]) == ("deepspeed", 2, 6)
    assert result["tokens_per_s"] > 0
    steps = [json.loads(line)["step"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4, 6]


def test_a_failing_job_exits_non_zero_with_the_ranks_error(tmp_path: pathlib.Path) -> None:
    args = ["--task", "examples.heart_disease.task:task", "--data", "atlantis", "--nproc", "2"]
    done = quorum("baseline", "run", *args, "--out", str(tmp_path / "bad"), timeout=180)
    assert done.returncode != 0
    assert "the baseline job failed" in done.stderr
    assert "rank 0:" in done.stderr and "atlantis" in done.stderr


def test_missing_extra_says_which_to_install(tmp_path: pathlib.Path) -> None:
    code = (
        "import sys; sys.modules['deepspeed'] = None; from quorum.cli import main; "
        "sys.argv = ['quorum', 'baseline', 'run', '--task', 'tests.baseline_tasks:tiny_gpt', "
        f"'--engine', 'deepspeed', '--out', {str(tmp_path)!r}]; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "pip install 'quorum-fl[llm]'" in " ".join(done.stderr.split())
