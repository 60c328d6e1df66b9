"""The tokens API over real HTTP: an admin creates, lists and revokes named tokens with roles;
a revoked token is refused at once; the last admin token stays."""

from __future__ import annotations

import asyncio
import pathlib

import httpx

from tests.integration.harness import TOKEN, federation
from tests.sse import aframes


def test_tokens_are_created_listed_and_revoked_by_an_admin(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            async with httpx.AsyncClient(base_url=fed.admin_url) as http:

                def bearer(token: str) -> dict[str, str]:
                    return {"Authorization": f"Bearer {token}"}

                admin = bearer(TOKEN)
                made = await http.post(
                    "/api/v1/tokens", json={"name": "grafana", "role": "viewer"}, headers=admin
                )
                assert made.status_code == 201, made.text
                created = made.json()
                assert created["name"] == "grafana" and created["role"] == "viewer"
                viewer = bearer(created["token"])

                listed = (await http.get("/api/v1/tokens", headers=admin)).json()
                assert {t["name"]: t["role"] for t in listed} == {
                    "config": "admin",
                    "grafana": "viewer",
                }
                assert all("token" not in t for t in listed)  # no secret after creation

                # the viewer reads, but neither operates nor administers
                assert (await http.get("/api/v1/runs", headers=viewer)).status_code == 200
                stop = await http.post("/api/v1/runs/run-x/stop", headers=viewer)
                assert stop.status_code == 403 and "operator" in stop.json()["detail"]
                assert (await http.get("/api/v1/tokens", headers=viewer)).status_code == 403

                again = await http.post(
                    "/api/v1/tokens", json={"name": "grafana", "role": "admin"}, headers=admin
                )
                assert again.status_code == 409 and "grafana" in again.json()["detail"]
                for body in ({"name": "../x", "role": "viewer"}, {"name": "y", "role": "root"}):
                    bad = await http.post("/api/v1/tokens", json=body, headers=admin)
                    assert bad.status_code == 422, bad.text

                revoked = await http.post("/api/v1/tokens/grafana/revoke", headers=admin)
                assert revoked.status_code == 200 and revoked.json()["role"] == "viewer"
                refused = await http.get("/api/v1/runs", headers=viewer)
                assert refused.status_code == 401  # at once: every request asks the store
                missing = await http.post("/api/v1/tokens/grafana/revoke", headers=admin)
                assert missing.status_code == 404

                last = await http.post("/api/v1/tokens/config/revoke", headers=admin)
                assert last.status_code == 409 and "last admin token" in last.json()["detail"]
                # with a second admin token, the first can go
                second = await http.post(
                    "/api/v1/tokens", json={"name": "ops-lead", "role": "admin"}, headers=admin
                )
                other = bearer(second.json()["token"])
                gone = await http.post("/api/v1/tokens/config/revoke", headers=other)
                assert gone.status_code == 200
                assert (await http.get("/api/v1/tokens", headers=admin)).status_code == 401
                events = (await http.get("/api/v1/events", headers=other)).json()
                kinds = [e["kind"] for e in events]
                assert kinds.count("token_created") == 2 and kinds.count("token_revoked") == 2

    asyncio.run(scenario())


def test_an_open_event_stream_ends_when_its_token_is_revoked(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            admin = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=fed.admin_url, timeout=10.0) as http:
                made = await http.post(
                    "/api/v1/tokens", json={"name": "watcher", "role": "viewer"}, headers=admin
                )
                viewer = {"Authorization": f"Bearer {made.json()['token']}"}
                async with http.stream("GET", "/api/v1/events/stream", headers=viewer) as stream:
                    frames = aframes(stream)
                    created = await anext(frames)  # the stream is open and serving
                    assert created["event"] == "token_created"
                    revoked = await http.post("/api/v1/tokens/watcher/revoke", headers=admin)
                    assert revoked.status_code == 200
                    # the revocation is an event: it wakes the stream, which ends (a read
                    # timeout here if it went on)
                    rest = [f async for f in frames]
                    assert all(f.get("event") != "token_revoked" for f in rest)

    asyncio.run(scenario())
