"""The server process: gRPC federation service, admin API and coordinator in one event loop.

The composition root: it builds the parts of `quorum.server` and the admin API of
`quorum.admin` (which steers the server through `quorum.server.runtime`), so it sits above both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import grpc
import uvicorn

from quorum.admin.app import build_app
from quorum.admin.auth import TOKEN_FILE, ensure_admin_token
from quorum.admin.events import EventFeed
from quorum.config import ServerFile
from quorum.errors import ConfigError
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.server.backups import back_up_forever
from quorum.server.baselines import BaselineJobs
from quorum.server.blobstore import BlobStore
from quorum.server.checkpoints import Checkpoints
from quorum.server.claims import NO_PORT_SHARING, StateLock, bind
from quorum.server.coordinator import Coordinator
from quorum.server.federation import FederationService
from quorum.server.integrity import open_checked
from quorum.server.runtime import Runtime
from quorum.server.sessions import SessionRegistry
from quorum.server.undecodable import RefuseUndecodable
from quorum.wire.channel import server_options

log = logging.getLogger("quorum.server")


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Server:
    """Owns the store, the coordinator, the gRPC server and the admin API of one process."""

    def __init__(self, config: ServerFile, *, insecure: bool, fresh_start: bool = False) -> None:
        """`fresh_start` (`--init`): start even when the store is damaged or does not know
        runs whose checkpoints are on disk, moving those aside (quorum.server.integrity)."""
        cfg = config.server
        if not insecure and (cfg.tls_cert is None or cfg.tls_key is None):
            raise ConfigError(
                "set server.tls_cert and server.tls_key, or pass --insecure for plaintext on "
                "loopback"
            )
        self.config = config
        self.insecure = insecure
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_lock = StateLock(cfg.state_dir)
        try:
            self.store = open_checked(
                cfg.state_dir / "quorum.db", cfg.state_dir / "checkpoints", fresh_start
            )
        except BaseException:
            self._state_lock.release()
            raise
        if ensure_admin_token(self.store, cfg.state_dir, cfg.admin_token):
            log.info("event=admin_token_created path=%s", cfg.state_dir / TOKEN_FILE)
        self.coordinator = Coordinator(
            self.store,
            Checkpoints(cfg.state_dir / "checkpoints", cfg.keep_checkpoints),
            BlobStore(),
            SessionRegistry(),
        )
        self.runtime = Runtime(self.coordinator)
        self.baselines = BaselineJobs(self.store, cfg.state_dir, max_running=cfg.max_baseline_jobs)
        known = {r.name for r in self.store.runs()}
        for run in config.runs:
            if run.name not in known:
                self.coordinator.submit(run)
        # Made in start(): grpc.aio binds a server to the event loop current when it is made.
        self._grpc: grpc.aio.Server | None = None
        self.feed = EventFeed(self.store)
        self._grpc_serving = False
        self._admin: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cfg = self.config.server
        fed_host, fed_port = split_address(cfg.federation_address)
        admin_host, admin_port = split_address(cfg.admin_address)
        admin_socket = bind(admin_host, admin_port, "the admin API")
        try:
            bind(fed_host, fed_port, "the federation service").close()
        except ConfigError:
            admin_socket.close()
            raise
        self._grpc = grpc.aio.server(
            options=[*server_options(cfg.stream_window_kb), NO_PORT_SHARING],
            interceptors=[RefuseUndecodable()],
        )
        pb_grpc.add_FederationServicer_to_server(
            FederationService(self.coordinator.services, cfg), self._grpc
        )
        certfile = keyfile = None
        try:
            if self.insecure:
                bound = self._grpc.add_insecure_port(f"{fed_host}:{fed_port}")
                log.warning(
                    "event=insecure_mode detail=plaintext gRPC and HTTP; use on loopback only"
                )
            else:
                assert cfg.tls_cert is not None and cfg.tls_key is not None
                credentials = grpc.ssl_server_credentials(
                    [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())]
                )
                bound = self._grpc.add_secure_port(f"{fed_host}:{fed_port}", credentials)
                certfile, keyfile = str(cfg.tls_cert), str(cfg.tls_key)
        except RuntimeError:  # taken between the check and here
            bound = 0
        if not bound:
            admin_socket.close()
            raise ConfigError(f"cannot listen on {cfg.federation_address}: address in use")
        await self._grpc.start()
        self._grpc_serving = True
        self._admin = _AdminServer(
            self.feed,
            uvicorn.Config(
                build_app(
                    self.runtime,
                    self.baselines,
                    feed=self.feed,
                    grpc_serving=lambda: self._grpc_serving,
                ),
                host=admin_host,
                port=admin_port,
                log_level="warning",
                log_config=None,  # uvicorn's lines go through our handler (text or JSON)
                lifespan="off",
                ws="none",
                ssl_certfile=certfile,
                ssl_keyfile=keyfile,
            ),
        )
        self._tasks = [
            asyncio.create_task(self._admin.serve(sockets=[admin_socket])),
            asyncio.create_task(self.coordinator.run_forever()),
        ]
        if cfg.backup_every_s > 0:
            folder = cfg.backup_dir or cfg.state_dir / "backups"
            self._tasks.append(
                asyncio.create_task(
                    back_up_forever(self.store, folder, cfg.backup_every_s, cfg.keep_backups)
                )
            )
        while not self._admin.started and not self._tasks[0].done():
            await asyncio.sleep(0.02)
        if self._admin.started:
            self.baselines.start_queued()  # jobs a previous server process left queued
        log.info(
            "event=server_started federation=%s admin=%s state_dir=%s",
            cfg.federation_address,
            cfg.admin_address,
            cfg.state_dir,
        )

    async def wait(self) -> None:
        """Returns when the admin server exits (SIGINT / SIGTERM) or a part fails."""
        await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        self.baselines.close()  # a job ending from here on must not start a queued one
        if self._admin is not None:
            self._admin.should_exit = True
        for task in self._tasks[1:]:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # the part that ended the server: the rest still stops in order
                log.exception("event=server_part_failed")
        self._grpc_serving = False
        # Sessions end their streams themselves (each records its site's disconnection while
        # the store is open); cancelled by grpc's stop instead, they wrote to a closed store.
        for session in self.coordinator.services.sessions.connected():
            session.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
            await _calls_closed()
        await self.baselines.shutdown()
        self.close()
        log.info("event=server_stopped")

    def close(self) -> None:
        """Closes what construction opened, the store and the state directory's lock (all
        there is to close of a server that was never started)."""
        self.store.close()
        self._state_lock.release()


async def _calls_closed(timeout: float = 1.0) -> None:
    """Lets grpc's task of each call see its call's close, which grpc's core reports through
    the event loop, after `stop` has returned: the loop's end would cancel it mid-wait, and grpc
    logs that as an error ("Exception not handled by _handle_exceptions"). The task is grpc's
    (its coroutine's name); where a grpc names it otherwise, nothing is waited for."""
    calls = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__name__", "") == "_schedule_rpc_coro"
    ]
    if calls:
        await asyncio.wait(calls, timeout=timeout)


class _AdminServer(uvicorn.Server):
    """Ends the live event streams when it shuts down, on a signal or on Server.stop: uvicorn
    waits for every open response to finish, and a stream never would."""

    def __init__(self, feed: EventFeed, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._feed = feed

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._feed.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn raises the SIGTERM or SIGINT it caught again once it has shut down, for an
        # application around it to handle: that killed the process before Server.stop() could
        # stop the gRPC server, the baseline jobs and the store. Server.wait() returns instead.
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


async def serve(config: ServerFile, *, insecure: bool, fresh_start: bool = False) -> None:
    server = Server(config, insecure=insecure, fresh_start=fresh_start)
    try:
        await server.start()
    except BaseException:
        server.close()
        raise
    try:
        await server.wait()
    finally:
        await server.stop()
