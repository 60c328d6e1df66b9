"""The server process: gRPC federation service, admin API and coordinator in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import uvicorn

from quorum.admin.app import build_app
from quorum.admin.auth import TOKEN_FILE, ensure_admin_token
from quorum.config import ServerFile
from quorum.errors import ConfigError
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.server.blobstore import BlobStore
from quorum.server.checkpoints import Checkpoints
from quorum.server.coordinator import Coordinator
from quorum.server.federation import FederationService
from quorum.server.sessions import SessionRegistry
from quorum.server.store import Store
from quorum.wire.channel import GRPC_OPTIONS

log = logging.getLogger("quorum.server")


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def open_store(config: ServerFile) -> Store:
    return Store(config.server.state_dir / "quorum.db")


async def serve(config: ServerFile, *, insecure: bool) -> None:
    server_cfg = config.server
    if not insecure and (server_cfg.tls_cert is None or server_cfg.tls_key is None):
        raise ConfigError(
            "set server.tls_cert and server.tls_key, or pass --insecure for plaintext on loopback"
        )
    state_dir = server_cfg.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config)
    if ensure_admin_token(store, state_dir, server_cfg.admin_token):
        log.info("event=admin_token_created path=%s", state_dir / TOKEN_FILE)
    coordinator = Coordinator(
        store, Checkpoints(state_dir / "checkpoints"), BlobStore(), SessionRegistry()
    )
    known = {r.name for r in store.runs()}
    for run in config.runs:
        if run.name not in known:
            coordinator.submit(run)

    max_inflight = max((r.max_inflight_uploads for r in config.runs), default=4)
    grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(
        FederationService(
            coordinator,
            server_cfg.server_id,
            server_cfg.heartbeat_interval_s,
            server_cfg.session_timeout_s,
            max_inflight,
        ),
        grpc_server,
    )
    fed_host, fed_port = split_address(server_cfg.federation_address)
    admin_host, admin_port = split_address(server_cfg.admin_address)
    certfile = keyfile = None
    if insecure:
        grpc_server.add_insecure_port(f"{fed_host}:{fed_port}")
        log.warning("event=insecure_mode detail=plaintext gRPC and HTTP; use on loopback only")
    else:
        assert server_cfg.tls_cert is not None and server_cfg.tls_key is not None
        credentials = grpc.ssl_server_credentials(
            [(server_cfg.tls_key.read_bytes(), server_cfg.tls_cert.read_bytes())]
        )
        grpc_server.add_secure_port(f"{fed_host}:{fed_port}", credentials)
        certfile, keyfile = str(server_cfg.tls_cert), str(server_cfg.tls_key)
    await grpc_server.start()
    admin = uvicorn.Server(
        uvicorn.Config(
            build_app(coordinator),
            host=admin_host,
            port=admin_port,
            log_level="warning",
            lifespan="off",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
    )
    log.info(
        "event=server_started federation=%s admin=%s state_dir=%s",
        server_cfg.federation_address,
        server_cfg.admin_address,
        state_dir,
    )
    rounds = asyncio.create_task(coordinator.run_forever())
    try:
        await admin.serve()  # returns on SIGINT / SIGTERM
    finally:
        rounds.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rounds
        await grpc_server.stop(grace=1.0)
        store.close()
        log.info("event=server_stopped")
