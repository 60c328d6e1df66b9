"""The command line as a user meets it: keys, registration, refusals and config errors."""

from __future__ import annotations

import pathlib
import re
import time
from typing import Any

import httpx

from tests.e2e.cli import TASK, Deployment, quorum, run_settings
from tests.tls import server_tls


def test_keygen_writes_a_key_pair_and_site_add_registers_it(tmp_path: pathlib.Path) -> None:
    key = tmp_path / "site.key"
    done = quorum("site", "keygen", "--out", str(key))
    assert done.returncode == 0, done.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.with_suffix(".pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = quorum("site", "keygen", "--out", str(key))
    assert again.returncode == 2 and "--force" in again.stderr

    state = tmp_path / "state"
    args = (
        "site",
        "add",
        "--state-dir",
        str(state),
        "--name",
        "cleveland",
        "--public-key",
        str(key.with_suffix(".pub")),
    )
    assert quorum(*args, "--init").returncode == 0  # before any server: the store is new
    duplicate = quorum(*args)
    assert duplicate.returncode == 2 and "already registered" in duplicate.stderr
    listed = quorum("site", "list", "--state-dir", str(state))
    assert "cleveland" in listed.stdout and "active" in listed.stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", listed.stdout)  # when, in UTC


def test_unregistered_key_cannot_join(deployment: Deployment) -> None:
    deployment.run = None
    deployment.start_server()
    key = deployment.root / "stranger.key"
    assert quorum("site", "keygen", "--out", str(key)).returncode == 0
    started = time.monotonic()
    done = quorum(
        "client",
        "run",
        "--server",
        deployment.address,
        "--site-key",
        str(key),
        "--task",
        TASK,
        "--data",
        "delta=1",
        "--insecure",
        timeout=60,
    )
    assert done.returncode == 2
    assert "not registered; ask the operator to register it (`quorum sites add" in done.stderr
    assert time.monotonic() - started < 30
    events = deployment.get("/api/v1/events")
    assert any(e["kind"] == "join_refused" for e in events)
    assert deployment.get("/api/v1/sites") == []


def test_admin_api_needs_a_valid_token(deployment: Deployment) -> None:
    deployment.run = None
    deployment.start_server()
    base = f"http://127.0.0.1:{deployment.admin_port}"
    for path in ("/api/v1/health", "/api/v1/runs", "/api/v1/sites", "/api/v1/events"):
        assert httpx.get(base + path).status_code == 401
        wrong = httpx.get(base + path, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
    assert deployment.get("/api/v1/health")["status"] == "ok"
    schema = httpx.get(base + "/openapi.json").json()
    for path in (
        "/api/v1/runs/{run_id}/rounds/{round_no}",
        "/api/v1/runs/{run_id}/privacy",
        "/api/v1/sites",
        "/api/v1/runs",
        "/api/v1/baselines",
        "/api/v1/baselines/{baseline_id}",
        "/api/v1/baselines/{baseline_id}/cancel",
    ):
        assert path in schema["paths"]


def test_generated_admin_token_is_written_to_the_state_dir(tmp_path: pathlib.Path) -> None:
    d = Deployment(tmp_path, None)
    config = d.write_config()
    text = config.read_text().replace('admin_token = "e2e-test-token"\n', "")
    config.write_text(text)
    from quorum.sim import processes

    child = processes.start(
        "server", ["server", "start", "--config", str(config), "--insecure"], tmp_path / "logs"
    )
    d.children.append(child)
    try:
        token_file = d.state_dir / "admin.token"
        d.wait(token_file.exists, 30, "admin.token")
        token = token_file.read_text().strip()
        assert token and token_file.stat().st_mode & 0o777 == 0o600

        def healthy() -> Any:
            reply = httpx.get(
                f"http://127.0.0.1:{d.admin_port}/api/v1/health",
                headers={"Authorization": f"Bearer {token}"},
            )
            return reply.status_code == 200 and reply.json()  # 401 until the token is stored

        health = d.wait(healthy, 30, "health with the generated token")
        assert health["status"] == "ok"
    finally:
        d.stop()


def test_config_overrides_name_unknown_keys_and_bad_values(tmp_path: pathlib.Path) -> None:
    sim = "examples/heart_disease/sim.toml"
    unknown = quorum("sim", "--config", sim, "--set", "run.bogus=1")
    assert unknown.returncode == 2 and "run.bogus" in unknown.stderr
    bad_type = quorum("sim", "--config", sim, "--set", "run.rounds=many")
    assert bad_type.returncode == 2 and "run.rounds" in bad_type.stderr
    bad_choice = quorum("sim", "--config", sim, "--set", "run.strategy=sgd")
    assert bad_choice.returncode == 2 and "run.strategy" in bad_choice.stderr
    server = tmp_path / "server.toml"
    server.write_text("[server]\n")
    nope = quorum("server", "start", "--config", str(server), "--set", "server.nope=1")
    assert nope.returncode == 2 and "server.nope" in nope.stderr
    no_tls = quorum("server", "start", "--config", str(server))
    assert no_tls.returncode == 2 and "--insecure" in no_tls.stderr


def test_rounds_run_over_tls_through_the_command_line(tmp_path: pathlib.Path) -> None:
    # `quorum server start` without --insecure serves both ports with the configured
    # certificate; `quorum client run --root-cert` trusts it.
    deployment = Deployment(tmp_path, run_settings(rounds=2), tls=server_tls(tmp_path))
    try:
        deployment.start_server()
        deployment.start_site("a", "delta=1.0,n=1")
        deployment.start_site("b", "delta=3.0,n=1")
        run = deployment.wait_run(timeout=60)
        assert run["rounds_completed"] == 2
        detail = deployment.get(f"/api/v1/runs/{run['id']}/rounds/2")
        assert detail["metrics"]["fit"]["num_sites"] == 2
        assert all(p["bytes_in"] > 0 for p in detail["participants"] if p["kind"] == "fit")
    finally:
        deployment.stop()
