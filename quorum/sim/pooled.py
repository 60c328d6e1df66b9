"""The pooled (centralised) line of a simulation report, trained as a baseline job of the server.

`quorum sim` submits `POST /api/v1/baselines` for the run's task with `data = "pooled"`, exactly
as an operator would, and waits for it after the federated run: the pooled reference is produced
by the large-model track (DESIGN.md section 12), not by a second code path in the simulator.
`[sim] baseline = {...}` chooses the engine, ranks and length (a `BaselineSpec` table); the
task, the data, the seed and the device default to the run's.

Local-only references (each site trained alone) are no centralised job: they still come from
the task itself, in the simulator's process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from rich.console import Console

from quorum.admin.client import AdminClient
from quorum.baseline.spec import HEADLINE_METRICS, BaselineSpec, parse_spec
from quorum.config import SimFile
from quorum.errors import ConfigError
from quorum.task import HasBaselines

FINAL = ("completed", "failed", "cancelled")


@runtime_checkable
class HasLocalBaselines(Protocol):
    """A task that trains each site alone, without also training the pooled reference."""

    def local_baselines(
        self, sites: Mapping[str, str], device: str, seed: int
    ) -> dict[str, dict[str, float]]: ...


def spec(sim: SimFile) -> BaselineSpec:
    """The pooled job's spec: `[sim] baseline` over the run's task, seed and device."""
    own = sim.sim.baseline
    if own.get("task", sim.run.task) != sim.run.task:
        raise ConfigError(
            f"sim.baseline.task ({own['task']!r}) is not the run's task ({sim.run.task!r}); "
            "leave it out: the pooled baseline trains the run's task"
        )
    return parse_spec(
        {
            "data": "pooled",
            "seed": sim.run.seed,
            "device": sim.site.device,
            **own,
            "task": sim.run.task,
        }
    )


def submit(admin: AdminClient, baseline: BaselineSpec) -> dict[str, Any]:
    job: dict[str, Any] = admin.post("/api/v1/baselines", baseline.model_dump(mode="json"))
    return job


def wait(
    admin: AdminClient, job: dict[str, Any], console: Console, deadline: float
) -> dict[str, Any]:
    """Polls the job until it ends; cancels it if the simulation's time runs out first.
    `deadline` is on the `time.monotonic()` clock."""
    path = f"/api/v1/baselines/{job['id']}"
    with console.status(f"pooled baseline {job['id']}…") as status:
        while job["status"] not in FINAL:
            if time.monotonic() > deadline:
                console.print(f"[yellow]pooled baseline {job['id']} out of time: cancelled")
                cancelled: dict[str, Any] = admin.post(f"{path}/cancel")
                return cancelled
            progress = job.get("progress") or {}
            if progress:
                status.update(
                    f"pooled baseline {job['id']}: step {progress.get('step')} "
                    f"loss {progress.get('loss', float('nan')):.4f}"
                )
            time.sleep(0.5)
            job = admin.get(path)
    if job["status"] != "completed":
        tail = "\n".join((job.get("log_tail") or "").splitlines()[-15:])
        console.print(
            f"[yellow]pooled baseline {job['id']} {job['status']}: {job['error']}\n{tail}"
        )
    return job


def local_baselines(
    task: HasBaselines, sites: Mapping[str, str], device: str, seed: int
) -> dict[str, dict[str, float]]:
    """Each site trained alone: the task's `local_baselines` where it has one; else the local
    half of its `baselines` (whose pooled half is then trained for nothing and dropped)."""
    if isinstance(task, HasLocalBaselines):
        return task.local_baselines(sites, device, seed)
    return task.baselines(sites, device, seed).local


def section(
    job: dict[str, Any] | None, local: dict[str, dict[str, float]] | None
) -> dict[str, Any] | None:
    """The report's `baselines`: `pooled` (the job's numeric results, None unless it
    completed), `pooled_job` (which job, its settings and outcome) and `local`."""
    if job is None and local is None:
        return None
    pooled = None
    job_out = None
    if job is not None:
        result = job.get("result") or {}
        if job["status"] == "completed":
            # The task's own evaluation (accuracy_mean_sites where it has sites) and the job's
            # headline numbers (train and eval loss, throughput, wall time).
            merged = {key: result.get(key) for key in HEADLINE_METRICS}
            merged.update(result.get("eval_metrics") or {})
            pooled = {
                k: float(v)
                for k, v in merged.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        spec_ = job["spec"]
        job_out = {
            "id": job["id"],
            "status": job["status"],
            "engine": spec_.get("engine"),
            "nproc": spec_.get("nproc"),
            "steps": spec_.get("steps"),
            "epochs": spec_.get("epochs"),
            "peak_memory_bytes": result.get("peak_memory_bytes"),
            "error": job.get("error"),
        }
    return {"pooled": pooled, "pooled_job": job_out, "local": local or {}}
