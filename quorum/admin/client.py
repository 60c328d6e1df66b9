"""A small client of the admin API (httpx), used by `quorum sim`, tests and scripts."""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx

from quorum.errors import QuorumError


class AdminClient:
    def __init__(
        self, base_url: str, token: str, verify: bool | str | ssl.SSLContext = True
    ) -> None:
        if isinstance(verify, str):  # a CA bundle for a self-signed server certificate
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=10.0,
        )

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Any:
        response = self._http.get(path, params=params)
        self._check(response)
        return response.json()

    def post(self, path: str, body: Any = None) -> Any:
        response = self._http.post(path, json=body)
        self._check(response)
        return response.json()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/api/v1/health")
                return
            except (httpx.TransportError, QuorumError):
                if time.monotonic() > deadline:
                    raise QuorumError(f"admin API did not answer within {timeout:.0f} s") from None
                time.sleep(0.2)

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise QuorumError(
                f"admin API {response.request.method} {response.request.url.path}: "
                f"{response.status_code} {detail}"
            )
