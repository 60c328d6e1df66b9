"""FastAPI application: health, and one router per resource (runs and their rounds, sites,
events, baselines, tokens, metrics, probes, docs, the dashboard), behind bearer tokens."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from quorum import __version__
from quorum.admin.auth import allows, hash_token
from quorum.admin.baselines import baselines_router
from quorum.admin.dashboard.router import add_dashboard
from quorum.admin.docs import ASSET_PREFIX, docs_router
from quorum.admin.docs import assets as docs_assets
from quorum.admin.events import EventFeed, events_router
from quorum.admin.metrics import Live, metrics_router
from quorum.admin.probes import probes_router
from quorum.admin.runs import runs_router
from quorum.admin.sites import sites_router
from quorum.admin.tokens import tokens_router
from quorum.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    QuorumError,
    StoreError,
    TaskError,
)
from quorum.server.baselines import BaselineJobs
from quorum.server.runtime import Runtime

_bearer = HTTPBearer(auto_error=False)

log = logging.getLogger("quorum.admin")


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

    @app.get("/api/v1/health", dependencies=[viewer])
    async def health() -> Health:
        return Health(
            status="ok",
            version=__version__,
            connected_sites=runtime.connected_sites(),
            current_run=runtime.current_run,
        )

    feed = feed or EventFeed(store)
    app.include_router(runs_router(runtime, viewer, operator))
    app.include_router(sites_router(runtime, viewer, operator))
    app.include_router(events_router(feed, viewer))
    if baselines is not None:
        app.include_router(baselines_router(baselines, viewer, operator))
    app.include_router(
        metrics_router(store, lambda: Live(runtime.connected_sites(), feed.open_streams), viewer)
    )
    app.include_router(probes_router(store, grpc_serving or (lambda: True)))
    app.include_router(docs_router(app.title))
    app.mount(ASSET_PREFIX, docs_assets(), name="docs-assets")
    app.include_router(tokens_router(store, admin))
    add_dashboard(app, viewer)
    return app
