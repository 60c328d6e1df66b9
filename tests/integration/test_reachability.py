"""What a site agent says when TLS does not match, from gRPC's real errors: a plaintext server
and a TLS server, dialled each way."""

from __future__ import annotations

import asyncio
import pathlib

import grpc
import pytest

from quorum.client.reachability import describe
from quorum.ports import free_port
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from tests.tls import server_tls


async def _error(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    channel = (
        grpc.aio.secure_channel(address, credentials)
        if credentials
        else grpc.aio.insecure_channel(address)
    )
    try:
        await pb_grpc.FederationStub(channel).Download(pb.DownloadRequest(), timeout=10).read()
    except grpc.aio.AioRpcError as exc:
        return describe(exc, tls=credentials is not None)
    finally:
        await channel.close()
    raise AssertionError("the call went through")


@pytest.mark.parametrize(
    ("server_tls_on", "client", "says"),
    [
        (False, "trusting", "pass --insecure to this agent"),
        (True, "plaintext", "the server may require TLS"),
        (True, "trusting nothing of ours", "pass --root-cert"),
    ],
)
def test_a_tls_mismatch_names_the_flag_to_change(
    tmp_path: pathlib.Path, server_tls_on: bool, client: str, says: str
) -> None:
    cert, key, bundle = server_tls(tmp_path)

    async def scenario() -> str:
        server = grpc.aio.server()
        port = free_port()
        if server_tls_on:
            creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            server.add_secure_port(f"127.0.0.1:{port}", creds)
        else:
            server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        try:
            credentials = {
                "trusting": grpc.ssl_channel_credentials(bundle.read_bytes()),
                "plaintext": None,
                "trusting nothing of ours": grpc.ssl_channel_credentials(),
            }[client]
            return await _error(f"localhost:{port}", credentials)
        finally:
            await server.stop(None)

    message = asyncio.run(scenario())
    assert message.startswith("UNAVAILABLE: ") and says in message, message
