"""Liveness and readiness probes for an orchestrator (Kubernetes, compose): no token, since a
kubelet has none, and nothing in the answers that a token would guard."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from quorum.errors import StoreError
from quorum.server.store import Store

log = logging.getLogger("quorum.admin")


def probes_router(store: Store, grpc_serving: Callable[[], bool]) -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get("/livez")
    async def livez() -> dict[str, str]:
        """200 while the process serves HTTP."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "not ready: says which part"}})
    async def readyz() -> JSONResponse:
        """200 when the state store answers and the federation (gRPC) server is serving."""
        problems = []
        try:
            store.ping()
        except StoreError as exc:
            log.error("event=not_ready error=%s", exc)  # paths stay out of an open route
            problems.append("state store: not answering")
        if not grpc_serving():
            problems.append("federation server: not serving")
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok"})

    return router
