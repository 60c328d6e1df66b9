"""Unit tests of quorum.admin.auth: token hashes, roles and the first admin token."""

from __future__ import annotations

import hashlib
import os
import pathlib
import sqlite3
import stat
from collections.abc import Iterator

import pytest

from quorum.admin.auth import ROLES, TOKEN_FILE, allows, ensure_admin_token, hash_token
from quorum.server.store import Store


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    s = Store(tmp_path / "quorum.db")
    yield s
    s.close()


def _token_count(store: Store) -> int:
    conn = sqlite3.connect(store.path)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM tokens").fetchone()
    finally:
        conn.close()
    return int(count)


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("s3cret") == hashlib.sha256(b"s3cret").hexdigest()
    assert hash_token("s3cret") != hash_token("s3cret ")
    assert len(hash_token("")) == 64
    assert hash_token("naïve") == hashlib.sha256("naïve".encode()).hexdigest()


@pytest.mark.parametrize(
    ("role", "needed", "ok"),
    [
        ("viewer", "viewer", True),
        ("viewer", "operator", False),
        ("viewer", "admin", False),
        ("operator", "viewer", True),
        ("operator", "operator", True),
        ("operator", "admin", False),
        ("admin", "viewer", True),
        ("admin", "operator", True),
        ("admin", "admin", True),
    ],
)
def test_roles_are_ordered(role: str, needed: str, ok: bool) -> None:
    assert allows(role, needed) is ok


def test_roles() -> None:
    assert ROLES == ("viewer", "operator", "admin")


def test_first_start_generates_a_token_file_0600(store: Store, tmp_path: pathlib.Path) -> None:
    token = ensure_admin_token(store, tmp_path, None)
    assert token is not None
    assert len(token) >= 32
    path = tmp_path / TOKEN_FILE
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.token_role(hash_token(token)) == "admin"
    assert _token_count(store) == 1


def test_the_token_is_stored_only_as_a_hash(store: Store, tmp_path: pathlib.Path) -> None:
    token = ensure_admin_token(store, tmp_path, None)
    assert token is not None
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("quorum.db*"))
    assert hash_token(token).encode() in raw
    assert token.encode() not in raw


def test_generated_tokens_are_random(tmp_path: pathlib.Path) -> None:
    tokens = []
    for i in range(3):
        folder = tmp_path / str(i)
        folder.mkdir()
        s = Store(folder / "quorum.db")
        try:
            tokens.append(ensure_admin_token(s, folder, None))
        finally:
            s.close()
    assert len(set(tokens)) == 3


def test_a_second_start_creates_nothing_new(store: Store, tmp_path: pathlib.Path) -> None:
    token = ensure_admin_token(store, tmp_path, None)
    path = tmp_path / TOKEN_FILE
    before = (path.read_bytes(), os.stat(path).st_ino, os.stat(path).st_mtime_ns)
    assert ensure_admin_token(store, tmp_path, None) is None
    assert (path.read_bytes(), os.stat(path).st_ino, os.stat(path).st_mtime_ns) == before
    assert _token_count(store) == 1
    assert token is not None and store.token_role(hash_token(token)) == "admin"


def test_a_configured_token_is_registered_and_nothing_written(
    store: Store, tmp_path: pathlib.Path
) -> None:
    assert ensure_admin_token(store, tmp_path, "configured-secret") is None
    assert store.token_role(hash_token("configured-secret")) == "admin"
    assert not (tmp_path / TOKEN_FILE).exists()
    assert _token_count(store) == 1
    # a restart with the same configuration adds nothing
    assert ensure_admin_token(store, tmp_path, "configured-secret") is None
    assert _token_count(store) == 1


def test_a_store_with_a_configured_token_generates_none_later(
    store: Store, tmp_path: pathlib.Path
) -> None:
    ensure_admin_token(store, tmp_path, "configured-secret")
    assert ensure_admin_token(store, tmp_path, None) is None
    assert not (tmp_path / TOKEN_FILE).exists()


def test_rotating_the_configured_token_revokes_the_old_one(
    store: Store, tmp_path: pathlib.Path
) -> None:
    ensure_admin_token(store, tmp_path, "old-secret")
    ensure_admin_token(store, tmp_path, "new-secret")
    assert store.token_role(hash_token("new-secret")) == "admin"
    assert store.token_role(hash_token("old-secret")) is None
