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

STREAM_END: object = grpc.aio.EOF  # type: ignore[attr-defined]
"""What `read()` on a grpc.aio stream returns once the other side has finished."""
