"""Watching a server over HTTP: the live event stream (a real httpx streaming client), the
Prometheus metrics after a real run, the probes and the offline API docs."""

from __future__ import annotations

import asyncio
import pathlib
import re
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from quorum.admin.app import build_app
from quorum.config import ServerConfig, ServerFile
from quorum.server_process import Server
from tests.integration.harness import TOKEN, Federation, federation, run_config, wait_for
from tests.sse import aframes

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _collect(
    fed: Federation, until: str, params: dict[str, Any] | None = None, **headers: str
) -> list[dict[str, Any]]:
    """The stream's events until one of kind `until` (included)."""
    out: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=fed.admin_url, headers=AUTH, timeout=30) as http,
        http.stream("GET", "/api/v1/events/stream", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for frame in aframes(response):
            if "comment" in frame:
                continue
            out.append(frame)
            if frame["event"] == until:
                return out
    raise AssertionError("the stream ended before the event")


def test_the_event_stream_follows_a_run_and_resumes(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=3)]) as fed:
            (run,) = await fed.api("/api/v1/runs")
            following = asyncio.create_task(
                asyncio.wait_for(_collect(fed, "run_completed", {"run_id": run["id"]}), 60)
            )
            fed.add_site("a", "delta=1.0,n=1,sleep=0.05")
            fed.add_site("b", "delta=1.0,n=1,sleep=0.05")
            live = await following

            # In order, all of the run, every round: what the list API holds for the run.
            ids = [f["id"] for f in live]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            assert {f["data"]["run_id"] for f in live} == {run["id"]}
            assert [f["data"]["round"] for f in live if f["event"] == "round_completed"] == [
                1,
                2,
                3,
            ]
            listed = await fed.api("/api/v1/events", run_id=run["id"])
            assert [f["data"] for f in live] == listed
            assert all(f["event"] == f["data"]["kind"] for f in live)

            # A client that reconnects with Last-Event-ID gets exactly the events after it.
            second = next(f for f in live if f["event"] == "round_completed")
            after = {"run_id": run["id"]}
            resumed = await asyncio.wait_for(
                _collect(fed, "run_completed", after, **{"Last-Event-ID": str(second["id"])}), 30
            )
            assert resumed == [f for f in live if f["id"] > second["id"]]
            # `after=N` starts there too (Last-Event-ID wins when a reconnecting client sends it)
            after = {"run_id": run["id"], "after": second["id"]}
            assert await asyncio.wait_for(_collect(fed, "run_completed", after), 30) == resumed

            # Unfiltered, the sites' registrations (no run) are there too, before the run's.
            everything = await asyncio.wait_for(_collect(fed, "run_completed"), 30)
            kinds = [f["event"] for f in everything]
            assert kinds.count("site_registered") == 2
            assert [f for f in everything if f["data"]["run_id"] == run["id"]] == live

    asyncio.run(scenario())


def test_the_event_stream_needs_a_token_and_keeps_alive(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            async with httpx.AsyncClient(base_url=fed.admin_url, timeout=10) as http:
                for headers in ({}, {"Authorization": "Bearer wrong"}):
                    answer = await http.get("/api/v1/events/stream", headers=headers)
                    assert answer.status_code == 401
                viewer = await http.post(
                    "/api/v1/tokens", json={"name": "watcher", "role": "viewer"}, headers=AUTH
                )
                headers = {"Authorization": f"Bearer {viewer.json()['token']}"}
                fed.server.feed.keepalive_s = 0.2
                async with http.stream("GET", "/api/v1/events/stream", headers=headers) as response:
                    stream = aframes(response)
                    created = await asyncio.wait_for(anext(stream), 10)
                    assert created["event"] == "token_created"
                    assert await asyncio.wait_for(anext(stream), 10) == {"comment": "keep-alive"}
                    # an event recorded now reaches the open stream at once
                    fed.register("late")
                    frame = await asyncio.wait_for(anext(stream), 10)
                    while "comment" in frame:
                        frame = await asyncio.wait_for(anext(stream), 10)
                    assert frame["event"] == "site_registered"
                    assert frame["data"]["site"] == "late"
                    streams = _samples((await http.get("/metrics", headers=AUTH)).text)
                    assert streams[("quorum_event_streams", frozenset())] == 1
                # The client went away: the server stops serving its stream.
                await wait_for(lambda: _true(fed.server.feed.open_streams == 0), 10)

    asyncio.run(scenario())


async def _true(value: bool) -> bool:
    return value


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_after_a_real_run(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=3)]) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            fed.add_site("b", "delta=1.0,n=1")
            run = await fed.wait_run("completed")
            async with httpx.AsyncClient(base_url=fed.admin_url, timeout=10) as http:
                assert (await http.get("/metrics")).status_code == 401
                answer = await http.get("/metrics", headers=AUTH)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain; version=")
            samples = _samples(answer.text)

            def value(metric: str, **labels: str) -> float:
                return samples[(metric, frozenset(labels.items()))]

            rid = run["id"]
            assert value("quorum_connected_sites") == 2
            assert value("quorum_rounds_completed_total", run_id=rid) == 3
            assert value("quorum_rounds_aborted_total", run_id=rid) == 0
            assert value("quorum_round_duration_seconds_count", run_id=rid, status="completed") == 3
            detail = [await fed.api(f"/api/v1/runs/{rid}/rounds/{n}") for n in (1, 2, 3)]
            assert value("quorum_received_bytes_total", run_id=rid) == sum(
                d["bytes_in"] for d in detail
            )
            assert value("quorum_sent_bytes_total", run_id=rid) == sum(
                d["bytes_out"] for d in detail
            )
            assert value("quorum_run_info", run_id=rid, name="test-run", status="completed") == 1
            # fit and evaluate tasks of 2 sites in 3 rounds
            fits = value("quorum_site_task_duration_seconds_count", kind="fit")
            assert fits == 6

    asyncio.run(scenario())


def test_probes_and_offline_docs(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with (
            federation(tmp_path, []) as fed,
            httpx.AsyncClient(base_url=fed.admin_url, timeout=10) as http,
        ):
            live = await http.get("/livez")
            assert (live.status_code, live.json()) == (200, {"status": "ok"})
            ready = await http.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ok"})

            for page, assets in (
                ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}),
                ("/redoc", {"redoc.standalone.js", "favicon-32x32.png"}),
            ):
                html = (await http.get(page)).text
                urls = set(re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html))
                assert urls, page
                assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
                assert {u.rsplit("/", 1)[1] for u in urls if "/docs/assets/" in u} == assets
                assert "http://" not in html and "https://" not in html, page
            for name, kind in (
                ("swagger-ui-bundle.js", "javascript"),
                ("swagger-ui.css", "text/css"),
                ("redoc.standalone.js", "javascript"),
                ("favicon-32x32.png", "image/png"),
            ):
                asset = await http.get(f"/docs/assets/{name}")
                assert asset.status_code == 200 and kind in asset.headers["content-type"]
                assert len(asset.content) > 500

    asyncio.run(scenario())


def test_readyz_says_what_is_not_ready(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        config = ServerFile(server=ServerConfig(state_dir=tmp_path, admin_token=TOKEN))
        server = Server(config, insecure=True)  # constructed, not started
        app = build_app(server.runtime, grpc_serving=lambda: False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            answer = await client.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["problems"] == ["federation server: not serving"]
            server.store.close()
            answer = await client.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["problems"][0].startswith("state store: ")
            assert (await client.get("/livez")).status_code == 200

    asyncio.run(scenario())
