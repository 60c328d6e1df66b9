"""Runs in the admin API (`/api/v1/runs`): submit, list, get and stop a run, and read its
rounds, its privacy ledger and its latest model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from quorum.admin.baselines import BaselineLink, baseline_links
from quorum.admin.model_download import labelled_model
from quorum.admin.privacy import PrivacyOut, privacy_ledger
from quorum.config import RunConfig
from quorum.server.records import STORED_INT_MAX, RoundDetail, RoundSummary, RunRecord
from quorum.server.runtime import Runtime


class RunOut(BaseModel):
    id: str
    name: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    rounds_completed: int
    model_digest: str | None
    config: RunConfig | None
    """None when the stored record no longer validates (then `error` says why)."""
    baselines: list[BaselineLink] = []
    """Baseline jobs of the run's task (`GET /api/v1/runs/{id}` only; see /api/v1/baselines)."""


def runs_router(runtime: Runtime, viewer: Any, operator: Any) -> APIRouter:
    """`viewer` and `operator` are the app's role dependencies."""
    router = APIRouter(prefix="/api/v1/runs")
    store = runtime.store

    def run_out(record: RunRecord) -> RunOut:
        done = store.last_completed_round(record.id)
        digest = store.model_digest(record.id, done) if done else None
        return RunOut(
            id=record.id,
            name=record.name,
            status=record.status,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            error=record.error or record.config_problem,
            rounds_completed=done,
            model_digest=digest,
            config=record.config,
        )

    @router.get("", dependencies=[viewer])
    async def list_runs() -> list[RunOut]:
        return [run_out(r) for r in store.runs()]

    @router.post("", status_code=201, dependencies=[operator])
    async def submit_run(config: RunConfig) -> RunOut:
        return run_out(runtime.submit(config))

    @router.get("/{run_id}", dependencies=[viewer])
    async def get_run(run_id: str) -> RunOut:
        record = store.run(run_id)
        return run_out(record).model_copy(
            update={"baselines": baseline_links(store, record.config.task) if record.config else []}
        )

    @router.post("/{run_id}/stop", dependencies=[operator])
    async def stop_run(run_id: str) -> RunOut:
        runtime.stop(run_id)
        return run_out(store.run(run_id))

    @router.get("/{run_id}/rounds", dependencies=[viewer])
    async def list_rounds(
        run_id: str,
        offset: Annotated[int, Query(ge=0, le=STORED_INT_MAX)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[RoundSummary]:
        return store.rounds(run_id, offset, limit)

    @router.get("/{run_id}/rounds/{round_no}", dependencies=[viewer])
    async def get_round(
        run_id: str, round_no: Annotated[int, Path(ge=0, le=STORED_INT_MAX)]
    ) -> RoundDetail:
        store.run(run_id)
        return store.round_detail(run_id, round_no)

    @router.get("/{run_id}/privacy", dependencies=[viewer])
    async def get_privacy(run_id: str) -> PrivacyOut:
        """Site-level DP per site and round (what each site reported), and the run's central
        (user-level) ε when central DP is on."""
        return privacy_ledger(store, run_id)

    @router.get(
        "/{run_id}/model",
        dependencies=[viewer],
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def download_model(run_id: str) -> StreamingResponse:
        """The latest completed round's model (safetensors), its metadata naming the run, task,
        round and model digest."""
        return await labelled_model(store, runtime.checkpoints, run_id)

    return router
