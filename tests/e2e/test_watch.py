"""A server started with `--log-format json` writes only JSON lines with typed values, and shuts
down promptly and in order on SIGTERM while a client holds the live event stream open."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from typing import Any

import httpx

from quorum.sim import processes
from tests.e2e.cli import TOKEN, Deployment, quorum, run_settings
from tests.sse import aframes


async def _hold_stream_through_sigterm(
    deployment: Deployment, server: processes.Child
) -> list[dict[str, Any]]:
    """Opens the stream, reads the run's events to its end, sends SIGTERM, and returns what it
    read once the server has closed the stream (a ReadTimeout if it never does)."""
    seen: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{deployment.admin_port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=httpx.Timeout(10.0),
        ) as http,
        http.stream("GET", "/api/v1/events/stream") as response,
    ):
        async for frame in aframes(response):
            seen.append(frame)
            if frame.get("event") == "run_completed":
                server.process.send_signal(signal.SIGTERM)
    return seen


def test_json_logs_and_shutdown_with_an_open_stream(deployment: Deployment) -> None:
    deployment.run = run_settings(rounds=2)
    server = deployment.start_server("--log-format", "json")
    for name in ("a", "b"):
        deployment.start_site(name, "delta=1.0,n=1")

    seen = asyncio.run(asyncio.wait_for(_hold_stream_through_sigterm(deployment, server), 120))
    assert [f["event"] for f in seen if "event" in f][-1] == "run_completed"
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit:\n{server.log_tail()}") from None
    assert server.process.returncode == 0, server.log_tail()

    lines = server.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert [r for r in records if r["level"] == "error"] == []
    by_event = {r.get("event"): r for r in records}
    started = by_event["server_started"]
    assert started["admin"] == f"127.0.0.1:{deployment.admin_port}"
    assert by_event["insecure_mode"]["detail"] == "plaintext gRPC and HTTP; use on loopback only"
    completed = [r for r in records if r.get("event") == "round_completed"]
    assert [r["round"] for r in completed] == [1, 2]  # numbers, not strings
    assert records[-1]["event"] == "server_stopped"  # stopped in order, not killed
    assert all(isinstance(r["updates"], int) for r in completed)


def test_an_unknown_log_format_is_refused() -> None:
    for command in (("server", "start", "--config", "server.toml"), ("client", "run")):
        done = quorum(*command, "--log-format", "xml")
        assert done.returncode == 2
        assert "Invalid value for '--log-format': 'xml' is not one of 'text', 'json'" in (
            done.stderr
        )
