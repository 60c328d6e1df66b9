"""Baseline jobs in the admin API (`/api/v1/baselines`): submit, list, get, cancel.

A job is the centralised baseline of a task (DESIGN.md section 12) trained by the server's
`BaselineJobs` as a child process; its record (status, latest progress, result, error and the
end of its log) lives in the store beside the federated runs, and a run links to the jobs of
its task (`baseline_links`).
"""

from __future__ import annotations

from typing import Any, TypeGuard

from fastapi import APIRouter
from pydantic import BaseModel

from quorum.baseline.spec import HEADLINE_METRICS, BaselineSpec
from quorum.server.baselines import BaselineJobs
from quorum.server.records import BaselineRecord
from quorum.server.store import Store


class BaselineLink(BaseModel):
    """A baseline of a run's task, as `GET /api/v1/runs/{id}` lists it."""

    id: str
    status: str
    engine: str | None
    data: str | None
    metrics: dict[str, float]


def baseline_links(store: Store, task: str) -> list[BaselineLink]:
    links = []
    for record in store.baselines(task=task):
        result = record.result or {}
        picked = {key: result.get(key) for key in HEADLINE_METRICS}
        picked.update(result.get("eval_metrics") or {})
        links.append(
            BaselineLink(
                id=record.id,
                status=record.status,
                engine=record.spec.get("engine"),
                data=record.spec.get("data"),
                metrics={key: float(v) for key, v in picked.items() if _number(v)},
            )
        )
    return links


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def baselines_router(jobs: BaselineJobs, viewer: Any, operator: Any) -> APIRouter:
    """`viewer` and `operator` are the app's role dependencies."""
    router = APIRouter(prefix="/api/v1/baselines", tags=["baselines"])
    store = jobs.store

    @router.post("", status_code=201, dependencies=[operator])
    async def submit_baseline(spec: BaselineSpec) -> BaselineRecord:
        """Starts the centralised baseline of `spec.task` as a child process of the server.
        Refused (422) when the server cannot import the task or lacks the engine's extra."""
        return await jobs.submit(spec)

    @router.get("", dependencies=[viewer])
    async def list_baselines(task: str | None = None) -> list[BaselineRecord]:
        return store.baselines(task=task)

    @router.get("/{baseline_id}", dependencies=[viewer])
    async def get_baseline(baseline_id: str) -> BaselineRecord:
        return store.baseline(baseline_id)

    @router.post("/{baseline_id}/cancel", dependencies=[operator])
    async def cancel_baseline(baseline_id: str) -> BaselineRecord:
        """Stops every rank of the job (SIGTERM, then SIGKILL after a grace period); 409 when
        it has already ended."""
        return await jobs.cancel(baseline_id)

    return router
