"""Blob transfer for the site agent: resumable downloads into a digest-keyed cache, chunked
uploads with a header."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import pathlib
import re
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import grpc

from quorum.atomic import write_atomic
from quorum.errors import BlobError
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.wire import blobs, digests, frames
from quorum.wire.channel import STREAM_END
from quorum.wire.incoming import Incoming

DOWNLOAD_ATTEMPTS = 3
_NAME = re.compile(r"[0-9a-f]{64}")  # a blob's name: its SHA-256, as `blobs.digest` writes it

log = logging.getLogger("quorum.client")


class FederationStub(pb_grpc.FederationStub):  # type: ignore[misc]
    """The federation service's stub with its bulk calls in hand-written frames
    (`quorum.wire.frames`): a download's chunk is a view of its frame, and `upload` sends its
    chunks framed already, each in one copy of the site's tensors. The bytes on the wire are
    protobuf's: a server of any version reads and writes them as before."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        # Typed as the generated stub's calls are (grpc-stubs types the sync channel's).
        self.Download: Any = channel.unary_stream(
            frames.DOWNLOAD,
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=frames.parse_blob_chunk,
        )
        self.Upload: Any = channel.stream_stream(
            frames.UPLOAD,
            request_serializer=frames.serialise_upload,
            response_deserializer=pb.UploadReply.FromString,
        )


class BlobCache:
    """Recently used blobs in memory, and optionally on disk, keyed by their SHA-256 (their name).

    One in memory by default: a sync round's fit model is the model its sites evaluated at the
    end of the round before, so the newest is the one asked for again, and a site holds no
    second copy of a large model.

    A blob checked by the BLAKE3 its offer gave (`download`) is the bytes its server sent, not
    yet shown to be the bytes its name pins: it is kept `named=False`, and whoever needs the
    name's bytes (a secure-aggregation round, whose signed context names the model) checks
    them first. A blob read back from disk is checked against its name.

    With `spare`, the buffer of the next download can be made ahead (`prepare`), while the site
    waits for its next task, rather than at the download, on a round's critical path: a
    model-sized buffer's first touch is the host's page faults on a VM, 0.4-1.9 s for 1 GB on
    two shared cores. A site then holds a second model's bytes between its tasks, as it does
    during every download anyway; a simulation's many agents share a cache without one."""

    def __init__(
        self, directory: pathlib.Path | None = None, keep: int = 1, *, spare: bool = False
    ) -> None:
        self._memory: OrderedDict[str, tuple[bytes, bool]] = OrderedDict()
        self._dir = directory
        self._keep = keep
        self._keeps_spare = spare
        self._spare: tuple[int, io.BytesIO] | None = None  # its size, and the buffer
        self._making: asyncio.Future[io.BytesIO] | None = None
        self._fetching: dict[str, asyncio.Future[None]] = {}

    @property
    def spare_bytes(self) -> int:
        """The size of the buffer made ahead for the next download (0: none)."""
        return self._spare[0] if self._spare is not None else 0

    async def prepare(self, size: int) -> None:
        """Makes the next download's buffer, of `size` bytes, where this cache keeps a spare
        (a spare of that size already kept stays). Await it once the task before has let its
        memory go, so that the spare takes what that task no longer holds. The buffer is made in
        a worker thread, which a cancelled `prepare` (its session ended) cannot stop: the next
        `prepare` or download waits for that thread and frees its buffer first (`settle`). One
        that cannot be made (no memory) is not; the download makes its own then."""
        if not self._keeps_spare or self.spare_bytes == size:
            return
        await self.settle()
        self._spare = None  # let go before the next is made: never two at once
        making = self._making = asyncio.ensure_future(asyncio.to_thread(blobs.sized_buffer, size))
        # Its error is seen even where no one awaits it again (a cancelled prepare, then none).
        making.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.wait({making})  # cancelled, this leaves the thread's task to `settle`
        self._making = None
        try:
            self._spare = (size, making.result())
        except (MemoryError, ValueError, OverflowError) as exc:  # no memory; a size no buffer has
            log.warning("event=spare_not_made bytes=%d error=%r", size, exc)

    async def settle(self) -> None:
        """Waits for a spare still being made when its `prepare` was cancelled, and frees it:
        what comes next must not allocate beside it. Cancelled itself, it leaves the thread's
        task for the next to wait for."""
        making = self._making
        if making is None:
            return
        await asyncio.wait({making})
        self._making = None
        if making.exception() is None:  # a MemoryError: nothing was made
            making.result().close()  # frees the buffer, whoever still holds the task

    def take_buffer(self, size: int) -> io.BytesIO:
        """A download's buffer of `size` bytes: the spare where it is that size."""
        spare, self._spare = self._spare, None
        if spare is not None and spare[0] == size:
            return spare[1]
        del spare  # let go before the new one is made
        return blobs.sized_buffer(size)

    async def get(self, key: str) -> tuple[bytes, bool] | None:
        """The blob and whether it was checked against its name. A blob found lets the spare go
        first: the download it was made for will not come, and the task about to run would
        hold it beside its own memory. A file is read and checked in a worker thread."""
        if key in self._memory:
            self._spare = None
            self._memory.move_to_end(key)
            return self._memory[key]
        if self._dir is not None and (self._dir / key).exists():
            self._spare = None  # let go before the file is read into memory
            data = await asyncio.to_thread(_read_named, self._dir / key, key)
            if data is not None:
                self._remember(key, data, named=True)
                return data, True
        return None

    async def put(self, key: str, data: bytes, *, named: bool) -> None:
        """Keeps the blob; on disk too (written in a worker thread) where the cache has a
        folder."""
        self._remember(key, data, named=named)
        if self._dir is not None:
            await asyncio.to_thread(write_atomic, self._dir / key, data)

    def forget(self, key: str) -> None:
        self._memory.pop(key, None)

    def under_way(self, key: str) -> asyncio.Future[None] | None:
        """Done when the download of `key` that is under way ends, if one is."""
        return self._fetching.get(key)

    @contextlib.contextmanager
    def fetching(self, key: str) -> Iterator[None]:
        """Marks `key` as being downloaded (`under_way`) while the block runs."""
        done = asyncio.get_running_loop().create_future()
        self._fetching[key] = done
        try:
            yield
        finally:
            del self._fetching[key]
            done.set_result(None)

    def name(self, key: str) -> None:
        """Records that `key`'s bytes were checked against their name."""
        if key in self._memory:
            self._memory[key] = (self._memory[key][0], True)

    def _remember(self, key: str, data: bytes, *, named: bool) -> None:
        self._memory[key] = (data, named)
        while len(self._memory) > self._keep:
            self._memory.popitem(last=False)


def _read_named(path: pathlib.Path, key: str) -> bytes | None:
    """The file's bytes where they are the blob `key` names."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if blobs.digest(data) == key else None


async def download(
    stub: pb_grpc.FederationStub,
    session_id: str,
    key: str,
    size: int,
    cache: BlobCache,
    *,
    blake3: str = "",
) -> bytes:
    """Fetches a blob by digest, resuming from the last byte received if the stream breaks.
    The bytes are written in place into one buffer of the announced size and hashed as they
    arrive (`Incoming`): the blob is held once, never grown and copied. They are checked
    against `blake3` where the server gave it (`quorum.wire.digests`), else against `key`, the
    blob's name: as a cached blob that was checked by a BLAKE3 only is, before it is handed out
    under its name."""
    if not _NAME.fullmatch(key):  # it names a file in the site's cache folder
        raise BlobError(f"the server named a blob {key[:72]!r}, which is no SHA-256 in hex")
    await cache.settle()
    while True:
        cached = await cache.get(key)
        if cached is not None:
            data, named = cached
            if named or blake3:
                return data
            if await asyncio.to_thread(blobs.digest, data) == key:
                cache.name(key)
                return data
            cache.forget(key)  # the server's bytes, not the name's: fetched anew
            continue
        under_way = cache.under_way(key)
        if under_way is None:
            break
        # Another site of a shared cache (a simulation host's) is fetching it: one download,
        # its bytes for both. Whatever became of it, look again.
        await asyncio.wait({under_way})
    with cache.fetching(key):
        return await _fetch(stub, session_id, key, size, cache, blake3)


async def _fetch(
    stub: pb_grpc.FederationStub,
    session_id: str,
    key: str,
    size: int,
    cache: BlobCache,
    blake3: str,
) -> bytes:
    buffer = cache.take_buffer(size)
    expected, algorithm = (blake3, digests.BLAKE3) if blake3 else (key, digests.SHA256)
    blob = Incoming(buffer, algorithm)
    failures = 0  # in a row, without a byte between: a long download over a flaky link goes on
    while True:
        started_at = blob.received
        try:
            call = stub.Download(
                pb.DownloadRequest(session_id=session_id, digest=key, offset=blob.received)
            )
            async for chunk in call:
                if chunk.offset != blob.received:
                    raise BlobError(f"chunk at offset {chunk.offset}, expected {blob.received}")
                if blob.received + len(chunk.data) > size:
                    raise BlobError(f"the blob {key[:16]}… is longer than its {size} bytes")
                await blob.add(chunk.data)
            break
        except grpc.aio.AioRpcError as exc:
            failures = 1 if blob.received > started_at else failures + 1
            retryable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
            if not retryable or failures == DOWNLOAD_ATTEMPTS:
                raise
    if blob.received != size:
        raise BlobError(f"downloaded blob {key[:16]}… ended at {blob.received} of {size} bytes")
    digest = await blob.finish()
    if digest != expected:
        raise BlobError(
            f"downloaded blob {key[:16]}… ({size} bytes) does not match its {algorithm} digest"
        )
    data = buffer.getvalue()  # bytes, shared read-only with the cache: no copy (`sized_buffer`)
    await cache.put(key, data, named=algorithm == digests.SHA256)
    return data


async def upload(
    stub: FederationStub, header: pb.UploadHeader, data: blobs.Pieces
) -> pb.UploadReceipt:
    """Sends the header, waits for the server's grant (or refusal), then the bytes, a chunk at a
    time cut from `data`'s pieces into its frame."""
    if not isinstance(stub, FederationStub):  # a generated stub would fail at the first chunk
        raise TypeError("upload needs the site's FederationStub, which sends framed chunks")
    call = stub.Upload()
    await call.write(pb.UploadMessage(header=header))
    reply = await call.read()
    if reply is not STREAM_END and reply.WhichOneof("kind") == "grant":
        # Read while writing: the server may answer before it has every byte (it refused them
        # partway, say its spool's disk filled) and end the call, which fails the next write.
        answer = asyncio.ensure_future(call.read())
        try:
            for frame in data.chunks(head=frames.upload_chunk_head):
                if answer.done():
                    break
                await call.write(frame)
            else:
                await call.done_writing()
        except grpc.aio.AioRpcError:
            pass  # the answer says why: a receipt, or (a broken call) the call's error
        except BaseException:
            answer.cancel()
            raise
        reply = await answer
    if reply is STREAM_END or reply.WhichOneof("kind") != "receipt":
        raise ConnectionError("the server ended the upload without a receipt")
    receipt: pb.UploadReceipt = reply.receipt
    return receipt


async def download_model(
    stub: pb_grpc.FederationStub, session_id: str, offer: pb.TaskOffer, cache: BlobCache
) -> bytes:
    """The model a task offer names, checked against its BLAKE3 where the server sent it. A
    secure-aggregation fit checks it against its name: the round's signed context names the
    model by its SHA-256, so that no site is sent other bytes than its peers (a BLAKE3 is
    signed by no one, and sites from before it sign none)."""
    return await download(
        stub,
        session_id,
        offer.model_digest,
        offer.model_size,
        cache,
        blake3="" if offer.HasField("secagg") else offer.model_blake3,
    )
