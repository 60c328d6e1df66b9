"""FastAPI application: runs, rounds, sites, events and health, behind bearer tokens."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from quorum import __version__
from quorum.admin.auth import allows, hash_token
from quorum.admin.baselines import BaselineLink, baseline_links, baselines_router
from quorum.admin.dashboard.router import add_dashboard
from quorum.admin.docs import ASSET_PREFIX, docs_router
from quorum.admin.docs import assets as docs_assets
from quorum.admin.events import EventFeed, events_router
from quorum.admin.metrics import Live, metrics_router
from quorum.admin.model_download import labelled_model
from quorum.admin.privacy import PrivacyOut, privacy_ledger
from quorum.admin.probes import probes_router
from quorum.admin.tokens import tokens_router
from quorum.config import RunConfig
from quorum.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    QuorumError,
    StoreError,
    TaskError,
)
from quorum.identity import parse_public
from quorum.server.baselines import BaselineJobs
from quorum.server.records import RoundDetail, RoundSummary
from quorum.server.runtime import Runtime
from quorum.server.store import RunRecord, SiteRecord

_bearer = HTTPBearer(auto_error=False)

log = logging.getLogger("quorum.admin")


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


class SiteOut(BaseModel):
    name: str
    public_key: str
    registered_at: float
    revoked: bool
    connected: bool


class SiteIn(BaseModel):
    name: str
    public_key: str
    """PEM text, or the 32 raw key bytes in base64."""


class Health(BaseModel):
    status: str
    version: str
    connected_sites: int
    current_run: str | None


def build_app(
    runtime: Runtime,
    baselines: BaselineJobs | None = None,
    *,
    feed: EventFeed | None = None,
    grpc_serving: Callable[[], bool] | None = None,
) -> FastAPI:
    """Route handlers are coroutines: they run on the server's event loop, beside the
    coordinator whose in-memory state (sessions, open rounds) `runtime` touches. `feed` wakes
    the live event streams (the server closes it at shutdown); `grpc_serving` says whether the
    federation server beside the app serves (for /readyz; None: there is none to wait for)."""
    app = FastAPI(
        title="Quorum admin API",
        version=__version__,
        description=(
            "Inspect and steer federated runs. Every route but the probes (/livez, /readyz), "
            "the documentation and the dashboard's page (/dashboard) needs "
            "`Authorization: Bearer <token>`."
        ),
        docs_url=None,
        redoc_url=None,
    )
    store = runtime.store

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own answer echoes the input, which may hold what JSON cannot carry (NaN,
        # an unpaired surrogate): it failed with a 500. Where and why is all the client needs.
        problems = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        return Response(
            json.dumps({"detail": problems}, ensure_ascii=True, default=str),
            status_code=422,
            media_type="application/json",
        )

    @app.exception_handler(QuorumError)
    async def quorum_error(_: Request, exc: QuorumError) -> JSONResponse:
        status = {
            NotFoundError: 404,
            ConflictError: 409,
            ConfigError: 422,
            TaskError: 422,
            StoreError: 503,
        }.get(type(exc), 400)
        if status >= 500:
            log.error("event=admin_request_failed error=%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    def role(needed: str) -> Callable[..., str]:
        def check(
            creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> str:
            if creds is None or creds.scheme.lower() != "bearer":
                raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
            granted = store.token_role(hash_token(creds.credentials))
            if granted is None:
                raise HTTPException(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})
            if not allows(granted, needed):
                raise HTTPException(403, f"this route needs the {needed} role; token has {granted}")
            return granted

        return check

    viewer = Depends(role("viewer"))
    operator = Depends(role("operator"))
    admin = Depends(role("admin"))

    def run_out(record: RunRecord) -> RunOut:
        done = store.last_completed_round(record.id)
        digest = store.round_detail(record.id, done).model_digest if done else None
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

    def site_out(record: SiteRecord) -> SiteOut:
        return SiteOut(
            name=record.name,
            public_key=base64.b64encode(record.public_key).decode(),
            registered_at=record.registered_at,
            revoked=not record.active,
            connected=runtime.is_connected(record.name),
        )

    @app.get("/api/v1/health", dependencies=[viewer])
    async def health() -> Health:
        return Health(
            status="ok",
            version=__version__,
            connected_sites=runtime.connected_sites(),
            current_run=runtime.current_run,
        )

    @app.get("/api/v1/runs", dependencies=[viewer])
    async def list_runs() -> list[RunOut]:
        return [run_out(r) for r in store.runs()]

    @app.post("/api/v1/runs", status_code=201, dependencies=[operator])
    async def submit_run(config: RunConfig) -> RunOut:
        return run_out(runtime.submit(config))

    @app.get("/api/v1/runs/{run_id}", dependencies=[viewer])
    async def get_run(run_id: str) -> RunOut:
        record = store.run(run_id)
        return run_out(record).model_copy(
            update={"baselines": baseline_links(store, record.config.task) if record.config else []}
        )

    @app.post("/api/v1/runs/{run_id}/stop", dependencies=[operator])
    async def stop_run(run_id: str) -> RunOut:
        runtime.stop(run_id)
        return run_out(store.run(run_id))

    @app.get("/api/v1/runs/{run_id}/rounds", dependencies=[viewer])
    async def list_rounds(
        run_id: str,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[RoundSummary]:
        return store.rounds(run_id, offset, limit)

    @app.get("/api/v1/runs/{run_id}/rounds/{round_no}", dependencies=[viewer])
    async def get_round(run_id: str, round_no: int) -> RoundDetail:
        store.run(run_id)
        return store.round_detail(run_id, round_no)

    @app.get("/api/v1/runs/{run_id}/privacy", dependencies=[viewer])
    async def get_privacy(run_id: str) -> PrivacyOut:
        """Site-level DP per site and round (what each site reported), and the run's central
        (user-level) ε when central DP is on."""
        return privacy_ledger(store, run_id)

    @app.get(
        "/api/v1/runs/{run_id}/model",
        dependencies=[viewer],
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def download_model(run_id: str) -> StreamingResponse:
        """The latest completed round's model (safetensors), its metadata naming the run, task,
        round and model digest."""
        return await labelled_model(store, runtime.checkpoints, run_id)

    @app.get("/api/v1/sites", dependencies=[viewer])
    async def list_sites() -> list[SiteOut]:
        return [site_out(s) for s in store.sites()]

    @app.post("/api/v1/sites", status_code=201, dependencies=[operator])
    async def add_site(site: SiteIn) -> SiteOut:
        text = site.public_key.strip()
        raw = text.encode() if text.startswith("-----BEGIN") else _b64(text)
        return site_out(store.add_site(site.name, parse_public(raw, "public_key")))

    @app.post("/api/v1/sites/{name}/revoke", dependencies=[operator])
    async def revoke_site(name: str) -> SiteOut:
        runtime.revoke_site(name)
        return site_out(store.site(name))

    @app.get("/api/v1/events", dependencies=[viewer])
    async def events(
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        run_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events after the id `after`, in order: all of them, or those of run `run_id`."""
        return store.events(after, limit, run_id)

    if baselines is not None:
        app.include_router(baselines_router(baselines, viewer, operator))
    feed = feed or EventFeed(store)
    app.include_router(events_router(feed, viewer))
    app.include_router(
        metrics_router(store, lambda: Live(runtime.connected_sites(), feed.open_streams), viewer)
    )
    app.include_router(probes_router(store, grpc_serving or (lambda: True)))
    app.include_router(docs_router(app.title))
    app.mount(ASSET_PREFIX, docs_assets(), name="docs-assets")
    app.include_router(tokens_router(store, admin))
    add_dashboard(app, viewer)
    return app


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError("public_key is neither PEM nor base64") from None
