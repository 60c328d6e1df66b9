"""Routes of the dashboard: the page, its static files, and `GET /api/v1/whoami`."""

from __future__ import annotations

import pathlib
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from quorum.admin.auth import Role

STATIC = pathlib.Path(__file__).parent / "static"

# The page loads only its own files and talks only to its own origin: an injected script
# (the token sits in sessionStorage) could neither load nor send anywhere else.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class WhoAmI(BaseModel):
    role: Role
    """What the bearer token may do: viewer (read), operator (also submit and stop runs,
    register sites) or admin (everything)."""


def add_dashboard(app: FastAPI, viewer: Any) -> None:
    """`viewer`: the app's dependency that lets any valid token through and yields its role."""
    router = APIRouter()

    @router.get("/dashboard", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
        )

    @router.get("/dashboard/", include_in_schema=False)
    async def slash() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @router.get("/api/v1/whoami")
    async def whoami(role: str = viewer) -> WhoAmI:
        """The role of the bearer token (the dashboard enables what the role allows)."""
        return WhoAmI.model_validate({"role": role})

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
