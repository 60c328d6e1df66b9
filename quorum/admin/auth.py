"""Admin bearer tokens: random, stored as SHA-256 hashes, each with a role.

Roles are ordered: a viewer reads, an operator also submits and stops runs and registers
sites, an admin may do everything.
"""

from __future__ import annotations

import hashlib
import pathlib
import secrets
from typing import Literal, get_args

from quorum.atomic import write_atomic
from quorum.server.store import Store

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
TOKEN_FILE = "admin.token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def ensure_admin_token(store: Store, state_dir: pathlib.Path, configured: str | None) -> str | None:
    """Registers the configured token, or creates one at first start and writes it to
    state_dir/admin.token (mode 0600). Returns the token when this call created it."""
    if configured:
        store.replace_tokens("config", hash_token(configured), "admin")
        return None
    if store.has_tokens():
        return None
    token = secrets.token_urlsafe(32)
    write_atomic(state_dir / TOKEN_FILE, (token + "\n").encode(), mode=0o600)
    store.add_token(hash_token(token), "admin", "generated")
    return token
