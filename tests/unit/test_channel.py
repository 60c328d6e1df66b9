"""The federation server's gRPC options: the shared ones, and a fixed receive window per stream
(no bandwidth-delay probing), which bounds what gRPC holds per upload, unless the operator
leaves the window to gRPC's probing (0)."""

from __future__ import annotations

from quorum.config import ServerConfig
from quorum.wire.channel import GRPC_OPTIONS, server_options


def test_the_server_fixes_each_streams_window_instead_of_probing() -> None:
    default = ServerConfig().stream_window_kb
    options = dict(server_options(default))
    assert options["grpc.http2.bdp_probe"] == 0
    assert options["grpc.http2.lookahead_bytes"] == default * 1024 > 0
    assert set(GRPC_OPTIONS) <= set(server_options(64))
    assert dict(server_options(4096))["grpc.http2.lookahead_bytes"] == 4 * 1024 * 1024


def test_a_window_of_zero_leaves_it_to_grpcs_probing() -> None:
    options = server_options(0)
    assert options == GRPC_OPTIONS
    assert "grpc.http2.bdp_probe" not in dict(options)
    assert "grpc.http2.lookahead_bytes" not in dict(options)
