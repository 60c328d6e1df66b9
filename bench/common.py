"""What both sides of the benchmark share: the run's shape, paths, child environment, output."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = pathlib.Path(os.environ.get("QUORUM_BENCH_BIN") or pathlib.Path(sys.executable).parent)
"""The venv's bin folder: Flower's CLIs live there, and the SuperLink finds flwr-serverapp on
PATH. Not resolved, since the venv's python is a symlink out of the venv. QUORUM_BENCH_BIN names
another (bench/many_cores.sh: wheels installed with `pip --target` on a device machine)."""

ROUND_TIME_DEFINITION = (
    "interval between successive round completions (Quorum: rounds[k].finished_at - "
    "rounds[k-1].finished_at from the admin API; Flower: successive evaluate_fn marks), "
    "median over the rounds after the warm-up"
)


@dataclass(frozen=True)
class RunSpec:
    params: int
    nodes: int
    rounds: int
    """Total rounds, warm-up included."""
    warmup: int
    timeout_s: float
    interval_s: float

    def tag(self, framework: str, variant: str = "") -> str:
        """`<framework>_P<P>_N<N>`, then `_<variant>` when one is named (e.g. "secagg")."""
        return f"{framework}_P{self.params}_N{self.nodes}" + (f"_{variant}" if variant else "")

    def fresh_dir(self, framework: str, variant: str = "") -> pathlib.Path:
        path = WORK_DIR / self.tag(framework, variant)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every benchmark process, both frameworks alike."""
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # The checkout first, then the caller's own path (carried wheels on a device machine).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        # One BLAS/OpenMP thread per process: up to 50 processes share 2 cores.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.update(extra or {})
    return env


def quorum_revision() -> str:
    """The checkout's commit, "+dirty" when quorum/ has uncommitted edits: the tree changes
    under the benchmark while others work on it, so each result says what it measured.
    QUORUM_REVISION names it where no git history travelled (a device machine's copy)."""
    if os.environ.get("QUORUM_REVISION"):
        return os.environ["QUORUM_REVISION"]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
            )
        except OSError:  # no git on this machine
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "quorum") else "")


def write_json(path: pathlib.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def stop_on_sigterm() -> None:
    """SIGTERM (a timeout, a kill) unwinds like Ctrl-C, so every run's `finally` stops its
    processes."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def run_sim(
    config: str,
    out: pathlib.Path,
    sets: list[str],
    extra: list[str] | None = None,
    timeout: float = 900,
) -> tuple[dict[str, Any] | None, str, float]:
    """`quorum sim --config CONFIG` without baselines, writing under `out`, with `--set` for each
    of `sets` and `extra` arguments: its JSON report (None when it wrote none), the tail of its
    stderr and its wall time in seconds."""
    report = out / "report.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "quorum", "sim", "--config", config, "--report", str(report)]
    for item in ["sim.baselines=false", f"sim.output_dir={out}", *sets]:
        command += ["--set", item]
    started = time.monotonic()
    done = subprocess.run(
        [*command, *(extra or [])],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = round(time.monotonic() - started, 1)
    result = json.loads(report.read_text()) if report.exists() else None
    return result, done.stderr[-2000:], wall
