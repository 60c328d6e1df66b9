"""Sites in the admin API (`/api/v1/sites`): register a site's public key, list the sites,
revoke one (its session ends at once)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from quorum.errors import ConfigError
from quorum.identity import parse_public
from quorum.server.records import SiteRecord
from quorum.server.runtime import Runtime


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


def sites_router(runtime: Runtime, viewer: Any, operator: Any) -> APIRouter:
    """`viewer` and `operator` are the app's role dependencies."""
    router = APIRouter(prefix="/api/v1/sites")
    store = runtime.store

    def site_out(record: SiteRecord) -> SiteOut:
        return SiteOut(
            name=record.name,
            public_key=base64.b64encode(record.public_key).decode(),
            registered_at=record.registered_at,
            revoked=not record.active,
            connected=runtime.is_connected(record.name),
        )

    @router.get("", dependencies=[viewer])
    async def list_sites() -> list[SiteOut]:
        return [site_out(s) for s in store.sites()]

    @router.post("", status_code=201, dependencies=[operator])
    async def add_site(site: SiteIn) -> SiteOut:
        text = site.public_key.strip()
        raw = text.encode() if text.startswith("-----BEGIN") else _b64(text)
        return site_out(store.add_site(site.name, parse_public(raw, "public_key")))

    @router.post("/{name}/revoke", dependencies=[operator])
    async def revoke_site(name: str) -> SiteOut:
        runtime.revoke_site(name)
        return site_out(store.site(name))

    return router


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError("public_key is neither PEM nor base64") from None
