"""An in-process federation for integration tests: the real server (gRPC + admin API) and real
site agents in one event loop, over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from quorum import identity
from quorum.admin.client import AdminClient
from quorum.aggregation import accumulator
from quorum.client.agent import Backoff, SiteAgent, StageHook
from quorum.client.transfer import BlobCache
from quorum.config import RunConfig, ServerConfig, ServerFile
from quorum.ports import free_port
from quorum.server.services import RoundServices
from quorum.server_process import Server
from quorum.task import SiteTask
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile
from tests.vector_task import task as vector_task

TOKEN = "integration-test-token"
TASK = "tests.vector_task:task"


def fold_in_slices(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Makes every fold of an upload run in three slices side by side, as a large model's do
    (`accumulator.by_slices`), however small the model; returns the slices read, as they are."""
    monkeypatch.setattr(accumulator, "FOLD_THREADS", 3)
    monkeypatch.setattr(accumulator, "SLICE_VALUES", 1)
    read: list[tuple[int, int]] = []
    between = BlobFile.blocks_between

    def spy(self: BlobFile, start: int, stop: int) -> Any:
        read.append((start, stop))
        return between(self, start, stop)

    monkeypatch.setattr(BlobFile, "blocks_between", spy)
    return read


def buffers_made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the sites' download buffers made from now on, as they are made
    (`blobs.sized_buffer`)."""
    made: list[int] = []
    make = blobs.sized_buffer

    def spy(size: int) -> io.BytesIO:
        made.append(size)
        return make(size)

    monkeypatch.setattr(blobs, "sized_buffer", spy)
    return made


def run_config(**overrides: Any) -> RunConfig:
    base: dict[str, Any] = {
        "name": "test-run",
        "task": TASK,
        "rounds": 3,
        "min_fit_sites": 2,
        "min_available_sites": 2,
        "wait_timeout_s": 20,
        "round_timeout_s": 10,
        "evaluate_timeout_s": 10,
    }
    return RunConfig.model_validate({**base, **overrides})


@dataclass
class Federation:
    server: Server
    address: str
    admin_url: str
    state_dir: pathlib.Path
    credentials: grpc.ChannelCredentials | None = None
    agents: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def services(self) -> RoundServices:
        """The server's round services (store, checkpoints, models served, sessions, task book),
        for a test that looks inside or steps in."""
        return self.server.coordinator.services

    def register(self, name: str) -> Any:
        key = identity.generate()
        self.server.store.add_site(name, identity.public_bytes(key))
        return key

    def add_site(
        self,
        name: str,
        data: str,
        key: Any = None,
        on_stage: StageHook | None = None,
        site_task: SiteTask | None = None,
        task_ref: str = TASK,
        cache: BlobCache | None = None,
    ) -> Any:
        """Registers (unless a key is given) and starts an in-process agent: the vector task's
        site for `data`, or the given `site_task` of the task `task_ref`; `cache`: the agent's
        (one of its own by default)."""
        key = key or self.register(name)
        agent = SiteAgent(
            self.address,
            key,
            task_ref,
            site_task or vector_task.site(data, "cpu", 0),
            credentials=self.credentials,
            backoff=Backoff(base_s=0.05, cap_s=0.5),
            on_stage=on_stage,
            cache=cache,
        )
        self.agents.append(asyncio.create_task(agent.run(self.stop)))
        return key

    async def api(self, path: str, **params: Any) -> Any:
        client = AdminClient(self.admin_url, TOKEN, verify=False)
        try:
            return await asyncio.to_thread(client.get, path, **params)
        finally:
            client.close()

    async def wait_run(self, status: str = "completed", timeout: float = 30) -> dict[str, Any]:
        return await wait_for(lambda: self._run_status(status), timeout)

    async def wait_for_rounds(self, count: int, timeout: float = 30) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            runs = await self.api("/api/v1/runs")
            return runs[0] if runs and runs[0]["rounds_completed"] >= count else None

        return await wait_for(probe, timeout)

    async def _run_status(self, status: str) -> dict[str, Any] | None:
        runs = await self.api("/api/v1/runs")
        return runs[0] if runs and runs[0]["status"] == status else None


async def wait_for(probe: Callable[[], Awaitable[Any]], timeout: float, every: float = 0.1) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def federation(
    tmp_path: pathlib.Path, runs: list[RunConfig], **server: Any
) -> AsyncIterator[Federation]:
    fed_port, admin_port = free_port(), free_port()
    tls = server.pop("tls", None)  # (certificate, key, CA bundle): tests.tls.server_tls
    config = ServerFile(
        server=ServerConfig(
            federation_address=f"127.0.0.1:{fed_port}",
            admin_address=f"127.0.0.1:{admin_port}",
            state_dir=tmp_path / "state",
            admin_token=TOKEN,
            heartbeat_interval_s=0.5,
            session_timeout_s=5,
            **({"tls_cert": tls[0], "tls_key": tls[1]} if tls else {}),
            **server,
        ),
        runs=runs,
    )
    srv = Server(config, insecure=tls is None)
    await srv.start()
    scheme = "https" if tls else "http"
    fed = Federation(
        srv,
        f"localhost:{fed_port}" if tls else f"127.0.0.1:{fed_port}",
        f"{scheme}://127.0.0.1:{admin_port}",
        tmp_path / "state",
        credentials=grpc.ssl_channel_credentials(tls[2].read_bytes()) if tls else None,
    )
    try:
        yield fed
    finally:
        fed.stop.set()
        for agent in fed.agents:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent, 5)
        await srv.stop()


async def first_aborted(fed: Federation) -> dict[str, Any]:
    """The first aborted attempt of round 1, once there is one."""

    async def probe() -> dict[str, Any] | None:
        runs = await fed.api("/api/v1/runs")
        if not runs:
            return None
        try:
            detail = await fed.api(f"/api/v1/runs/{runs[0]['id']}/rounds/1")
        except Exception:
            return None
        for attempt in [*detail["earlier_attempts"], detail]:
            if attempt["status"] == "aborted":
                return attempt
        return None

    found: dict[str, Any] = await wait_for(probe, 30)
    return found
