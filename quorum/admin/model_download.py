"""The run's model as the admin API serves it (`GET /api/v1/runs/{id}/model`): the latest
completed round's checkpoint, labelled in its safetensors metadata with the run, its task, the
round and the model's digest, so that a downloaded file says what it is.

The tensors are the checkpoint's bytes unchanged, streamed after a rewritten header. The digest
is the SHA-256 of the checkpoint as the sites received it (`model_digest` of the run and round):
since the server writes its models with safetensors' canonical layout, encoding the file's
tensors again without the metadata gives those bytes back (`quorum runs pull` checks it).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Iterator

from fastapi.responses import StreamingResponse

from quorum.errors import ConflictError, NotFoundError
from quorum.server.checkpoints import Checkpoints
from quorum.server.store import Store
from quorum.wire import blobs
from quorum.wire.blobfiles import hold

RUN_ID, RUN_NAME, TASK, ROUND, DIGEST = (
    "quorum.run_id",
    "quorum.run_name",
    "quorum.task",
    "quorum.round",
    "quorum.model_digest",
)


async def labelled_model(store: Store, checkpoints: Checkpoints, run_id: str) -> StreamingResponse:
    record = store.run(run_id)
    done = store.last_completed_round(run_id)
    path = checkpoints.model_path(run_id, done)
    try:
        # Opened first: a checkpoint pruned while it streams stays readable through the handle,
        # and held (`hold`), it is not written over as a spare.
        stream = path.open("rb")
    except FileNotFoundError:
        raise NotFoundError(f"run {run_id!r} has no model yet") from None
    try:
        hold(stream.fileno(), path)
    except FileNotFoundError:  # pruned between the open and the lock: rounds went by
        stream.close()
        raise ConflictError(f"run {run_id!r} moved on as its model was opened: ask again") from None
    try:
        if done:
            digest = str(store.model_digest(run_id, done))
        else:  # the initial model: no round recorded its digest
            digest = await asyncio.to_thread(_file_digest, stream)
        metadata = {RUN_ID: run_id, RUN_NAME: record.name, ROUND: str(done), DIGEST: digest}
        if record.config is not None:
            metadata[TASK] = record.config.task
        header = blobs.labelled_header(stream, metadata)
        size = os.fstat(stream.fileno()).st_size - stream.tell()
    except BaseException:
        stream.close()
        raise
    return StreamingResponse(
        _chunks(header, stream),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(len(header) + size),
            "Content-Disposition": f'attachment; filename="{run_id}-round-{done}.safetensors"',
        },
    )


def _file_digest(stream: io.BufferedReader) -> str:
    digest = hashlib.file_digest(stream, "sha256").hexdigest()
    stream.seek(0)
    return digest


def _chunks(header: bytes, stream: io.BufferedReader) -> Iterator[bytes]:
    """The labelled header, then the checkpoint's tensors (Starlette reads a plain iterator
    in its thread pool, off the server's event loop)."""
    with stream:
        yield header
        while chunk := stream.read(blobs.CHUNK_BYTES):
            yield chunk
