"""The admin API's interactive documentation (/docs, /redoc) from files inside the package.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN, which networks without internet
access (most hospital networks) block: the page stays blank. The pages here name only the
server's own URLs; docs_assets/PROVENANCE says where the files come from.
"""

from __future__ import annotations

import pathlib

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = pathlib.Path(__file__).with_name("docs_assets")
ASSET_PREFIX = "/docs/assets"


def docs_router(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    """The two pages; mount `assets()` at ASSET_PREFIX beside them."""
    router = APIRouter(include_in_schema=False)
    favicon = f"{ASSET_PREFIX}/favicon-32x32.png"

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
            swagger_favicon_url=favicon,
            # Swagger UI would otherwise send the schema to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSET_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    return router


def assets() -> StaticFiles:
    return StaticFiles(directory=ASSETS)
