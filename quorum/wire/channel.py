"""gRPC channel and server options shared by both ends."""

from __future__ import annotations

import grpc

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Chunks are 2 MiB (`blobs.CHUNK_BYTES`); no message comes near this, whatever the model size."""

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


def server_options(stream_window_kb: int) -> list[tuple[str, int]]:
    """The federation server's options: `GRPC_OPTIONS`, with each stream's receive window
    fixed at `stream_window_kb` beyond the message being read, not grown by gRPC's
    bandwidth-delay probing; 0 leaves it to the probing. On loopback the probing grew the
    windows until gRPC held uploads by the tens of MB per stream, outside the server's own
    accounting: at P = 10M and 25 sites the server peaked at 407-532 MB with it, 315-325 MB
    with a window of 4 MiB and the heaps' free memory given back after each upload
    (`heap.release_free_memory`), 226-264 MB at 2 sites. The window bounds an upload's speed
    over a link with a round trip instead (`bench/stream_window.py`): at 50 ms, about 20 MB/s
    with 64 KiB, 37 with 1 MiB, 73-78 with 4 MiB, 126-137 with 8 MiB, 400 probed."""
    if stream_window_kb == 0:
        return list(GRPC_OPTIONS)
    return [
        *GRPC_OPTIONS,
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", stream_window_kb * 1024),
    ]


STREAM_END: object = grpc.aio.EOF  # type: ignore[attr-defined]
"""What `read()` on a grpc.aio stream returns once the other side has finished."""
