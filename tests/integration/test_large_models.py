"""A model past 2 GiB (protobuf's limit on one message) through the chunked paths, on a machine
without 2 GiB to spare per copy: the model is a sparse file of zeros (no disk blocks, and the
server never reads it into memory), and every path it takes streams it.

Checked: its digest and NaN check over the stream (`BlobFile`), an upload of it checked from
its spool (`validation.check_blob`), the FedAvg step written block by
block into the round's staged checkpoint (`write_model`) and saved in place, then served from
that file by the real gRPC Download to a reader that hashes the 2 MiB chunks as they come, with
a download resumed at an offset past 2^31; the server's peak RSS grows by far less than a copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import struct

import grpc
import numpy as np

from quorum.aggregation import FedAvg
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.server.model_files import strategy_step, write_model
from quorum.server.validation import Received, check_blob
from quorum.wire import blobs
from quorum.wire.channel import GRPC_OPTIONS
from tests.integration.harness import federation

NUMEL = (2**31 + 2**27) // 4  # 2.125 GiB of float32
MiB = 2**20


def sparse_model(path: pathlib.Path, numel: int) -> None:
    """A safetensors file of one float32 tensor of zeros, written as a header and a hole."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [numel], "data_offsets": [0, 4 * numel]}})
    text = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        fh.truncate(8 + len(text) + 4 * numel)


def peak_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


async def fetch(stub: pb_grpc.FederationStub, session: str, digest: str, offset: int) -> str:
    """Reads a download from `offset`, checking each chunk's offset; returns its SHA-256."""
    sha = hashlib.sha256()
    async for chunk in stub.Download(
        pb.DownloadRequest(session_id=session, digest=digest, offset=offset)
    ):
        assert chunk.offset == offset and len(chunk.data) <= blobs.CHUNK_BYTES
        sha.update(chunk.data)
        offset += len(chunk.data)
    assert offset == chunk.total_size
    return sha.hexdigest()


def test_a_model_past_2_gib_streams_through_checkpoints_the_step_and_downloads(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            services = fed.services
            reset_peak_rss()
            base = peak_rss()
            path = services.checkpoints.model_path("big", 0)
            path.parent.mkdir(parents=True)
            sparse_model(path, NUMEL)
            path.with_name("round-00000.strategy.safetensors").write_bytes(blobs.encode({}))
            model, _ = await asyncio.to_thread(services.checkpoints.open, "big", 0)
            assert model.size > 2**31 and model.layout.numel == NUMEL
            assert await asyncio.to_thread(model.all_finite)
            # An upload of that size, spooled as the server spools one, is checked from the
            # spool a block at a time (its digest, layout and values), never read whole.
            upload = Received(open(path, "rb", buffering=0), model.digest)
            checked = await asyncio.to_thread(check_blob, upload, model.digest, model.layout)
            assert checked.numel == NUMEL and checked.digest == model.digest
            upload.close()
            # The round's step: the mean is all zeros too (untouched pages of np.zeros).
            mean = np.zeros(NUMEL, np.float64)
            new = await asyncio.to_thread(
                write_model,
                services.checkpoints,
                "big",
                1,
                model,
                strategy_step(FedAvg(), model, mean),
            )
            del mean
            services.checkpoints.save("big", 1, new, {})
            assert new.digest == model.digest  # the mean of zeros is the zeros
            digest = services.blobs.put(new)
            session = services.sessions.open("reader", "task")
            async with grpc.aio.insecure_channel(fed.address, options=GRPC_OPTIONS) as channel:
                stub = pb_grpc.FederationStub(channel)
                assert await fetch(stub, session.id, digest, 0) == digest
                # A download resumed past 2^31 gets the rest of the file, from there.
                offset = 2**31 + 12345
                tail = await fetch(stub, session.id, digest, offset)
            expected = hashlib.sha256(
                await asyncio.to_thread(new.read, offset, new.size)
            ).hexdigest()
            assert tail == expected
            # Nothing held the model whole: no copy of it (2.1 GiB) in the peak (the reader's
            # hash and the test's own tail read are in this process too: 512 MiB of slack).
            assert peak_rss() - base < 2**31 // 4 + new.size - offset

    asyncio.run(scenario())
