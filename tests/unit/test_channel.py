"""The federation server's gRPC options: the shared ones, and a fixed receive window per stream
(no bandwidth-delay probing), which bounds what gRPC holds per upload."""

from __future__ import annotations

from quorum.config import ServerConfig
from quorum.wire.channel import GRPC_OPTIONS, server_options


def test_the_server_fixes_each_streams_window_instead_of_probing() -> None:
    options = dict(server_options(ServerConfig().stream_window_kb))
    assert options["grpc.http2.bdp_probe"] == 0
    assert options["grpc.http2.lookahead_bytes"] == 64 * 1024
    assert set(GRPC_OPTIONS) <= set(server_options(64))
    assert dict(server_options(4096))["grpc.http2.lookahead_bytes"] == 4 * 1024 * 1024
