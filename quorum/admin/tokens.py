"""Admin bearer tokens in the admin API (`/api/v1/tokens`, admin role): create, list, revoke.

A token's secret is shown once, in the reply that creates it; the store keeps its SHA-256 only.
A revoked token is deleted, so the next request that bears it is refused (401); the last admin
token cannot be revoked. The token set in `server.admin_token` is registered again, as "config",
at every start.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from quorum.admin.auth import Role, hash_token
from quorum.server.records import TokenRecord
from quorum.server.store import Store


class TokenIn(BaseModel):
    name: str
    """1-128 letters, digits, '_', '.' or '-' (as site names); unique."""
    role: Role


class TokenOut(BaseModel):
    name: str
    role: Role
    created_at: float


class TokenCreated(TokenOut):
    token: str
    """The bearer secret: shown in this reply only."""


def _out(record: TokenRecord) -> TokenOut:
    return TokenOut.model_validate(record, from_attributes=True)


def tokens_router(store: Store, admin: Any) -> APIRouter:
    """`admin`: the dependency that lets admin tokens only through."""
    router = APIRouter(prefix="/api/v1/tokens", dependencies=[admin])

    @router.post("", status_code=201)
    async def create_token(body: TokenIn) -> TokenCreated:
        secret = secrets.token_urlsafe(32)
        record = store.create_token(body.name, body.role, hash_token(secret))
        return TokenCreated(**_out(record).model_dump(), token=secret)

    @router.get("")
    async def list_tokens() -> list[TokenOut]:
        return [_out(r) for r in store.tokens()]

    @router.post("/{name}/revoke")
    async def revoke_token(name: str) -> TokenOut:
        return _out(store.revoke_token(name))

    return router
