"""A small client of the admin API (httpx), used by `quorum sim`, tests and scripts."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx

from quorum.errors import QuorumError


class AdminClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        verify: bool | str | ssl.SSLContext = True,
        timeout: httpx.Timeout | float = 10.0,
    ) -> None:
        if isinstance(verify, str):  # a CA bundle for a self-signed server certificate
            verify = ssl.create_default_context(cafile=verify)
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=timeout,
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

    @contextlib.contextmanager
    def stream(
        self, path: str, headers: dict[str, str] | None = None, **params: Any
    ) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives (a model download, an event stream); a
        refusal raises as `get` does. The read timeout is the client's, per chunk."""
        with self._http.stream("GET", path, params=params, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            yield response

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
            if isinstance(detail, list):  # a 422's problems: where, and what is wrong there
                detail = "; ".join(
                    f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
                    for d in detail
                    if isinstance(d, dict)
                )
            raise QuorumError(
                f"admin API {response.request.method} {response.request.url.path}: "
                f"{response.status_code} {detail}"
            )
