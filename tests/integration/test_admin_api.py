"""Admin API routes that steer a run: stop, model download, pagination, roles."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
from typing import Any

import httpx
import pytest

from quorum import identity
from quorum.admin.auth import hash_token
from quorum.admin.client import AdminClient
from quorum.wire import blobs
from tests.integration.harness import TOKEN, Federation, federation, run_config, wait_for


def test_stop_download_and_paginate(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=40)]) as fed:
            fed.add_site("a", "delta=1.0,n=1,sleep=0.05")
            fed.add_site("b", "delta=1.0,n=1,sleep=0.05")
            run = await fed.wait_for_rounds(3)
            admin = AdminClient(fed.admin_url, TOKEN)
            await asyncio.to_thread(admin.post, f"/api/v1/runs/{run['id']}/stop")
            stopped = await fed.wait_run("stopped")
            assert 3 <= stopped["rounds_completed"] < 40

            response = await asyncio.to_thread(
                httpx.get,
                f"{fed.admin_url}/api/v1/runs/{run['id']}/model",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 200
            # The checkpoint's tensors, labelled with what they are (quorum.admin.model_download)
            params = blobs.decode(response.content)
            assert blobs.digest(blobs.encode(params)) == stopped["model_digest"]
            assert blobs.read_metadata(response.content) == {
                "quorum.run_id": run["id"],
                "quorum.run_name": stopped["name"],
                "quorum.task": stopped["config"]["task"],
                "quorum.round": str(stopped["rounds_completed"]),
                "quorum.model_digest": stopped["model_digest"],
            }
            assert float(params["b"][0]) == stopped["rounds_completed"]

            page = await fed.api(f"/api/v1/runs/{run['id']}/rounds", offset=1, limit=2)
            assert [r["round"] for r in page] == [2, 3]
            missing = await asyncio.to_thread(
                httpx.get,
                f"{fed.admin_url}/api/v1/runs/run-nope",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert missing.status_code == 404 and "run-nope" in missing.json()["detail"]
            admin.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["sync", "async", "gossip"])
def test_a_stop_ends_a_run_that_waits_for_sites(tmp_path: pathlib.Path, mode: str) -> None:
    """The run waits up to ten minutes for a third site; the operator's stop ends it at once."""
    extra: dict[str, Any] = {"mode": mode, "strategy": "fedavg"}
    if mode == "async":
        extra.update(buffer_size=2)
    config = run_config(min_fit_sites=1, min_available_sites=3, wait_timeout_s=600, **extra)

    async def scenario() -> None:
        async with federation(tmp_path, [config]) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            run = await fed.wait_run("running")
            await wait_for(lambda: _connected(fed, 1), 10)
            health = await fed.api("/api/v1/health")
            assert (health["current_run"], health["connected_sites"]) == (run["id"], 1)
            admin = AdminClient(fed.admin_url, TOKEN)
            await asyncio.to_thread(admin.post, f"/api/v1/runs/{run['id']}/stop")
            admin.close()
            stopped = await fed.wait_run("stopped", timeout=15)
            assert stopped["rounds_completed"] == 0 and stopped["error"] == "stopped by an operator"
            await wait_for(lambda: _no_current_run(fed), 10)

    asyncio.run(scenario())


async def _connected(fed: Federation, count: int) -> bool:
    return len(fed.services.sessions.connected()) >= count


async def _no_current_run(fed: Federation) -> bool:
    return (await fed.api("/api/v1/health"))["current_run"] is None


def test_viewer_token_reads_but_cannot_submit(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            fed.server.store.add_token(hash_token("viewer-token"), "viewer", "test")
            headers = {"Authorization": "Bearer viewer-token"}
            url = f"{fed.admin_url}/api/v1/runs"
            read = await asyncio.to_thread(httpx.get, url, headers=headers)
            assert read.status_code == 200
            body = run_config().model_dump(mode="json")
            write = await asyncio.to_thread(httpx.post, url, json=body, headers=headers)
            assert write.status_code == 403 and "operator" in write.json()["detail"]
            bad = await asyncio.to_thread(
                httpx.post,
                url,
                json={**body, "strategy": "fedavg", "proximal_mu": 0.5},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert bad.status_code == 422 and "proximal_mu" in bad.text

    asyncio.run(scenario())


def test_a_run_the_store_or_the_wire_could_not_carry_is_refused_with_422(
    tmp_path: pathlib.Path,
) -> None:
    """NaN in site_config, an unpaired surrogate in the task's name, a site_config past what a
    task offer carries: each answered 422 naming the problem, nothing stored, and the runs
    list and a restart of the server on its state still work."""
    bodies = [
        ({"task": "tests.vector_task:task", "site_config": {"lr": float("nan")}}, "NaN"),
        ({"task": "tests.vector_task:\udcff"}, "UTF-8"),
        ({"task": "tests.vector_task:task", "site_config": {"b": "x" * 2**21}}, "at most"),
        ({"task": "tests.vector_task:task", "round_timeout_s": float("inf")}, "finite"),
    ]

    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            for body, needle in bodies:
                response = await asyncio.to_thread(
                    httpx.post,
                    f"{fed.admin_url}/api/v1/runs",
                    content=json.dumps(body),  # allow_nan: the bytes an attacker could send
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/json",
                    },
                )
                assert response.status_code == 422, response.text
                assert needle in response.text
            assert await fed.api("/api/v1/runs") == []
        async with federation(tmp_path, []) as again:  # the same state directory
            assert await again.api("/api/v1/runs") == []

    asyncio.run(scenario())


def test_a_site_name_that_cannot_name_files_is_refused_with_422(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            key = base64.b64encode(identity.public_bytes(identity.generate())).decode()

            async def register(name: str) -> httpx.Response:
                return await asyncio.to_thread(
                    httpx.post,
                    f"{fed.admin_url}/api/v1/sites",
                    content=json.dumps({"name": name, "public_key": key}),  # \udcff as sent
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/json",
                    },
                )

            for name in ("\udcff", "../etc", "", "a b", "x" * 129):
                response = await register(name)
                assert response.status_code == 422, (name, response.text)
                assert "is not valid" in response.text
            assert await fed.api("/api/v1/sites") == []
            assert (await register("site-0001.east_2")).status_code == 201

    asyncio.run(scenario())
