"""The admin API fuzzed from its own OpenAPI schema (schemathesis, bounded): no request, however
malformed or hostile, gets a 5xx; afterwards a server restarted on the same state answers every
listing route."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from quorum.admin.app import build_app
from quorum.config import ServerConfig, ServerFile
from quorum.server_process import Server

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 30
"""Requests per route: about 300 in all, well inside a minute."""
pytestmark = pytest.mark.slow


def _server(state_dir: pathlib.Path) -> Server:
    # Constructed, not started: the admin app is driven in process (no ports); the baseline
    # job routes are left out so that no fuzzed body can launch a training job.
    return Server(
        ServerFile(server=ServerConfig(state_dir=state_dir, admin_token=TOKEN)), insecure=True
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzz-state")


def test_no_request_gets_a_server_error(state_dir: pathlib.Path) -> None:
    server = _server(state_dir)
    schema = schemathesis.openapi.from_asgi("/openapi.json", build_app(server.runtime))
    failures: list[str] = []
    sent = 0

    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/api/v1/events/stream":
                continue  # never ends by design; tests/integration/test_watch.py drives it

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,  # the same requests on every run: a failure reproduces
                database=None,
            )
            def fuzz(case: Any) -> None:
                nonlocal sent
                sent += 1
                response = case.call(headers=AUTH)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path}: {response.text[:300]}")

            fuzz()
    finally:
        server.close()
    assert failures == []
    assert sent >= 100  # the fuzz reached the routes


def test_a_server_restarted_on_the_fuzzed_state_answers_every_listing(
    state_dir: pathlib.Path,
) -> None:
    server = _server(state_dir)
    try:
        with TestClient(build_app(server.runtime)) as client:
            for path in ("/api/v1/health", "/api/v1/runs", "/api/v1/sites", "/api/v1/events"):
                assert client.get(path, headers=AUTH).status_code == 200, path
            for run in client.get("/api/v1/runs", headers=AUTH).json():
                assert client.get(f"/api/v1/runs/{run['id']}", headers=AUTH).status_code == 200
    finally:
        server.close()
