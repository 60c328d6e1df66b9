"""TLS on both ports, and revocation of a connected site."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from quorum.admin.client import AdminClient
from quorum.errors import AuthError
from tests.integration.harness import TOKEN, federation, run_config
from tests.tls import server_tls


def test_rounds_run_over_tls_on_both_ports(tmp_path: pathlib.Path) -> None:
    cert, key, ca = server_tls(tmp_path)

    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=2)], tls=(cert, key, ca)) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            fed.add_site("b", "delta=1.0,n=1")
            admin = AdminClient(fed.admin_url, TOKEN, verify=str(ca))
            assert fed.admin_url.startswith("https://")
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                runs = await asyncio.to_thread(admin.get, "/api/v1/runs")
                if runs and runs[0]["status"] == "completed":
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            admin.close()
            assert runs[0]["rounds_completed"] == 2

    asyncio.run(scenario())


def test_revoked_site_is_dropped_at_once_and_cannot_rejoin(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = run_config(rounds=6, min_fit_sites=2, min_available_sites=2)
        async with federation(tmp_path, []) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            fed.add_site("b", "delta=1.0,n=1")
            fed.add_site("c", "delta=1.0,n=1,sleep=0.2")
            while len(fed.services.sessions.connected()) < 3:
                await asyncio.sleep(0.05)
            admin = AdminClient(fed.admin_url, TOKEN)
            revoked = await asyncio.to_thread(admin.post, "/api/v1/sites/c/revoke")
            assert revoked["revoked"] is True and revoked["connected"] is False
            assert fed.services.sessions.by_site("c") is None
            c_agent = fed.agents[2]
            # told why, and what to do: its name and key stay taken
            with pytest.raises(AuthError, match=r"revoked.*make a new one.*under a new name"):
                await asyncio.wait_for(c_agent, 10)
            await asyncio.to_thread(admin.post, "/api/v1/runs", cfg.model_dump(mode="json"))
            admin.close()
            run = await fed.wait_run()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            assert detail["cohort"] == ["a", "b"]

    asyncio.run(scenario())
