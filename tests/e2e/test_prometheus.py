"""A real Prometheus server (Debian's `prometheus` package) scrapes a running Quorum server
with a viewer token and answers a query for the round counter of a completed run."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time
from typing import Any

import httpx

from quorum.ports import free_port
from tests.e2e.cli import Deployment, run_settings

PROMETHEUS = shutil.which("prometheus")


def _start_prometheus(
    root: pathlib.Path, target: str, token: str
) -> tuple[subprocess.Popen[bytes], int]:
    assert PROMETHEUS, (
        "needs Debian's prometheus package: apt-get install prometheus (.ci/run does)"
    )
    (root / "token").write_text(token)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "quorum",
                "authorization": {"type": "Bearer", "credentials_file": str(root / "token")},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    with open(root / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            # `timeout` bounds its life even if this test process dies without cleaning up
            [
                "timeout",
                "-k",
                "5",
                "180",
                PROMETHEUS,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, port


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}, timeout=5)
    answer.raise_for_status()
    body = answer.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_the_round_counter(
    deployment: Deployment, tmp_path: pathlib.Path
) -> None:
    deployment.run = run_settings(rounds=3)
    deployment.start_server()
    for name in ("a", "b"):
        deployment.start_site(name, "delta=1.0,n=1")
    run = deployment.wait_run("completed", timeout=120)
    admin = deployment.admin()
    try:
        viewer = admin.post("/api/v1/tokens", {"name": "prometheus", "role": "viewer"})["token"]
    finally:
        admin.close()

    root = tmp_path / "prometheus"
    root.mkdir()
    process, port = _start_prometheus(root, f"127.0.0.1:{deployment.admin_port}", viewer)
    try:
        promql = f'quorum_rounds_completed_total{{run_id="{run["id"]}"}}'

        def scraped() -> list[dict[str, Any]] | None:
            if process.poll() is not None:
                raise AssertionError((root / "prometheus.log").read_text()[-3000:])
            try:
                return _query(port, promql) or None
            except httpx.TransportError:  # not listening yet
                return None
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 503:  # listening, its storage not ready yet
                    return None
                raise

        deadline = time.monotonic() + 90
        result = None
        while result is None and time.monotonic() < deadline:
            result = scraped()
            time.sleep(0.5)
        assert result is not None, (root / "prometheus.log").read_text()[-3000:]
        (series,) = result
        assert series["metric"]["job"] == "quorum"
        assert float(series["value"][1]) == 3
        (up,) = _query(port, 'up{job="quorum"}')
        assert up["value"][1] == "1"
        sites = _query(port, "quorum_connected_sites")
        assert float(sites[0]["value"][1]) == 2
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
