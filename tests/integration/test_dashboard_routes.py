"""The dashboard's routes on a real server: the page and every asset it loads come from the
package (no other origin), the page is public while its data needs a token, and
`GET /api/v1/whoami` tells a token its role."""

from __future__ import annotations

import asyncio
import pathlib
import re

import httpx

from tests.integration.harness import TOKEN, federation

STATIC = pathlib.Path(__file__).resolve().parents[2] / "quorum/admin/dashboard/static"


def test_page_assets_and_whoami(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            async with httpx.AsyncClient(base_url=fed.admin_url) as http:
                page = await http.get("/dashboard")
                assert page.status_code == 200
                assert page.headers["content-type"].startswith("text/html")
                assert "default-src 'none'" in page.headers["content-security-policy"]
                assert (await http.get("/dashboard/")).status_code in (301, 302, 307, 308)

                # Every file the page names, and every module its scripts import, is served
                # from this origin with the type a browser needs to run it.
                names = re.findall(r'(?:src|href)="([^"]+)"', page.text)
                for module in STATIC.glob("*.js"):
                    names += [
                        f"/dashboard/static/{m}"
                        for m in re.findall(r'from "\./([^"]+)"', module.read_text())
                    ]
                assert all(n.startswith("/dashboard/static/") for n in names), names
                kinds = {".js": "text/javascript", ".css": "text/css"}
                for name in sorted(set(names)):
                    asset = await http.get(name)
                    assert asset.status_code == 200, name
                    kind = kinds[pathlib.PurePosixPath(name).suffix]
                    assert asset.headers["content-type"].startswith(kind), name
                assert (await http.get("/dashboard/static/%2e%2e/router.py")).status_code == 404

                assert (await http.get("/api/v1/whoami")).status_code == 401
                bad = await http.get("/api/v1/whoami", headers={"Authorization": "Bearer nope"})
                assert bad.status_code == 401
                admin = {"Authorization": f"Bearer {TOKEN}"}
                assert (await http.get("/api/v1/whoami", headers=admin)).json() == {"role": "admin"}
                for role in ("viewer", "operator"):
                    created = await http.post(
                        "/api/v1/tokens", json={"name": role, "role": role}, headers=admin
                    )
                    secret = created.json()["token"]
                    who = await http.get(
                        "/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"}
                    )
                    assert who.json() == {"role": role}

    asyncio.run(scenario())
