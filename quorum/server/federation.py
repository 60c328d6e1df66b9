"""The gRPC federation service: session streams, blob downloads and update uploads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

from quorum import heap
from quorum.config import ServerConfig
from quorum.errors import AuthError, UploadRejected
from quorum.identity import verify_join
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.server.services import RoundServices
from quorum.server.sessions import Session as SiteSession
from quorum.server.spools import SpoolPool, fit
from quorum.server.upload_budget import UploadBudget
from quorum.server.validation import Received
from quorum.wire import blobs, digests, frames
from quorum.wire.blobfiles import BlobFile, stream_held
from quorum.wire.finite_scan import FiniteScan
from quorum.wire.incoming import Incoming

log = logging.getLogger("quorum.server")

Context = grpc.aio.ServicerContext[Any, Any]

SPOOL_DIR = "uploads"
"""Where in the state directory uploads are spooled as they arrive (files without names)."""
DOWNLOADS_PER_SITE = 4
"""Downloads one site may have open at once, over its sessions (it fetches one model, or one
gossip parcel, at a time): a download left unread keeps its call until its site reads or
leaves."""


class FederationService(pb_grpc.FederationServicer):  # type: ignore[misc]
    def __init__(
        self,
        services: RoundServices,
        config: ServerConfig,
    ) -> None:
        self.services = services
        self.server_id = config.server_id
        self.heartbeat_interval_s = config.heartbeat_interval_s
        self.session_timeout_s = config.session_timeout_s
        self.transfer_idle_s = config.transfer_idle_timeout_s
        self._uploads = UploadBudget(
            config.max_inflight_uploads, config.max_inflight_upload_mb * 1_000_000
        )
        self._downloads = asyncio.Semaphore(config.max_inflight_downloads)
        self._open_downloads: Counter[str] = Counter()  # by site
        # As many spools kept as uploads may be received at once.
        self._spools = SpoolPool(config.state_dir / SPOOL_DIR, config.max_inflight_uploads)
        # Once an upload's bytes are in, the heaps' free memory goes back to the kernel: gRPC's
        # threads received them, and their heaps would keep the space (`heap`).
        self._free_memory = heap.Releases(heap.release_free_memory)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SiteMessage], context: Context
    ) -> AsyncIterator[pb.ServerMessage]:
        incoming = aiter(request_iterator)
        session = await self._join(incoming, context)
        if session is None:
            return
        yield pb.ServerMessage(
            welcome=pb.Welcome(
                session_id=session.id,
                site_name=session.site,
                heartbeat_interval_s=self.heartbeat_interval_s,
                upload_digests=digests.UPLOAD_DIGESTS,
            )
        )
        reader = asyncio.create_task(self._read(session, incoming))
        watchdog = asyncio.create_task(self._watch(session))
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            watchdog.cancel()
            self._ended(session)

    def _ended(self, session: SiteSession) -> None:
        """The session is over: its open tasks are lost, its site is no longer connected.
        Once, from whichever sees it first: the stream's end, or its watchdog (a closed
        session's writer may wait on a site that reads nothing)."""
        if session.ended:
            return
        session.ended = True
        self.services.sessions.drop(session)
        self.services.book.on_disconnect(session)
        self.services.store.event("site_disconnected", site=session.site)
        log.info("event=site_disconnected site=%s", session.site)

    async def _join(
        self, incoming: AsyncIterator[pb.SiteMessage], context: Context
    ) -> SiteSession | None:
        try:
            first = await asyncio.wait_for(anext(incoming), self.session_timeout_s)
        except (StopAsyncIteration, TimeoutError):
            return None
        if first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        site = self.services.store.site_by_key(first.hello.public_key)
        if site is None or not site.active:
            reason = "is not registered" if site is None else "was revoked"
            self.services.store.event("join_refused", reason=reason)
            advice = (
                "ask the operator to register it (`quorum sites add NAME --public-key KEY.pub`)"
                if site is None
                # a revoked site's name and key stay taken: it joins again as a new site
                else "a revoked key joins no more: make a new one (`quorum site keygen`) and ask "
                "the operator to register it under a new name"
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"this site key {reason}; {advice}"
            )
        assert site is not None
        nonce = secrets.token_bytes(32)
        await context.write(
            pb.ServerMessage(challenge=pb.Challenge(nonce=nonce, server_id=self.server_id))
        )
        try:
            proof = await asyncio.wait_for(anext(incoming), self.session_timeout_s)
            if proof.WhichOneof("kind") != "join":
                raise AuthError("the second message must be the join proof")
            verify_join(site.public_key, self.server_id, nonce, proof.join.signature)
        except (StopAsyncIteration, TimeoutError):
            return None
        except AuthError as exc:
            self.services.store.event("join_refused", site=site.name, reason=str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        session = self.services.sessions.open(site.name, first.hello.task)
        self.services.store.event("site_joined", site=site.name, task=first.hello.task)
        log.info("event=site_joined site=%s task=%s", site.name, first.hello.task)
        return session

    async def _read(self, session: SiteSession, incoming: AsyncIterator[pb.SiteMessage]) -> None:
        try:
            async for message in incoming:
                if session.closed:  # revoked, timed out, or backlogged: nothing more is taken
                    break
                session.last_seen = time.monotonic()
                kind = message.WhichOneof("kind")
                if kind == "result":
                    self.services.book.on_result(session, message.result)
                elif kind == "secagg":
                    self.services.book.on_secagg(session, message.secagg)
                elif kind == "gossip":
                    self.services.book.on_gossip(session, message.gossip)
                elif kind != "heartbeat":
                    session.send(
                        pb.ServerMessage(
                            notice=pb.Notice(
                                code="unexpected_message",
                                message=f"{kind!r} is not valid after joining",
                            )
                        )
                    )
        except (grpc.aio.AioRpcError, grpc.aio.AbortError, asyncio.CancelledError):
            pass  # the peer went away, or sent what the call was refused for
        finally:
            session.close()

    async def _watch(self, session: SiteSession) -> None:
        while not session.closed:
            await asyncio.sleep(self.heartbeat_interval_s)
            if time.monotonic() - session.last_seen > self.session_timeout_s:
                log.warning("event=session_timeout site=%s", session.site)
                session.close()
        self._ended(session)  # closed: timed out, revoked, replaced or backlogged

    async def Download(self, request: pb.DownloadRequest, context: Context) -> None:
        """The blob's `BlobChunk`s from `request.offset` on, serialised here: the server's
        interceptor passes them on as they are (`quorum.server.bulk_frames.framed`)."""
        session = self.services.sessions.get(request.session_id)
        if session is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or closed session")
        assert session is not None  # abort raised otherwise
        model = self.services.blobs.get(request.digest)
        parcel = None if model is not None else self.services.book.relayed(session, request.digest)
        size = len(model) if model is not None else len(parcel) if parcel is not None else -1
        if size < 0:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {request.digest!r} is served")
        if request.offset > size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "offset is past the end of the blob")
        if self._open_downloads[session.site] >= DOWNLOADS_PER_SITE:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this site has {DOWNLOADS_PER_SITE} downloads open; finish one first",
            )
        self._open_downloads[session.site] += 1
        try:
            blob = model if model is not None else parcel or b""
            sent = await self._send(context, blob, request.offset, size)
            if sent < 0:
                log.warning(
                    "event=download_stalled site=%s idle_s=%g", session.site, self.transfer_idle_s
                )
                # Behind the chunk the reader did not take: sent when it reads, or dropped
                # with its call. Its place among the downloads is free meanwhile; it still
                # counts among its site's.
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no chunk was taken for {self.transfer_idle_s:g} s",
                )
        finally:
            self._open_downloads[session.site] -= 1
            if not self._open_downloads[session.site]:
                del self._open_downloads[session.site]
        self.services.book.on_download(session, request.digest, sent, relayed=parcel is not None)

    async def _send(self, context: Context, blob: BlobFile | bytes, offset: int, size: int) -> int:
        """Writes the blob's chunks from `offset` on; the bytes sent, or -1 when the reader
        took no chunk for the idle time."""
        # A model is read from its file in a worker thread; a gossip parcel is held in memory.
        chunks = blob.stream(offset) if isinstance(blob, BlobFile) else stream_held(blob, offset)
        sent = 0
        # Bounded like uploads: chunks queued for slow readers cost server memory per stream.
        async with self._downloads:
            async for chunk in chunks:
                try:
                    async with asyncio.timeout(self.transfer_idle_s):
                        await context.write(frames.blob_chunk(offset, size, chunk))
                except TimeoutError:
                    return -1
                offset += len(chunk)
                sent += len(chunk)
        return sent

    async def Upload(
        self, request_iterator: AsyncIterator[frames.UploadFrame], context: Context
    ) -> AsyncIterator[pb.UploadReply]:
        incoming = aiter(request_iterator)
        try:
            first = await anext(incoming)
        except StopAsyncIteration:
            yield _refused(UploadRejected("empty_upload", "the upload carried no header"))
            return
        if not isinstance(first, pb.UploadMessage) or first.WhichOneof("kind") != "header":
            yield _refused(
                UploadRejected("no_header", "the first upload message must be the header")
            )
            return
        header = first.header
        session = self.services.sessions.get(header.session_id)
        try:
            if session is None:
                raise UploadRejected("unknown_session", "unknown or closed session; rejoin first")
            task = self.services.book.admit_upload(session, header)
            try:
                async with self._uploads.hold(header.size):
                    # Only now may the site send its bytes: until the grant, gRPC holds
                    # nothing of it, whatever the number of sites waiting.
                    yield pb.UploadReply(grant=pb.UploadGrant())
                    try:
                        upload = await _receive(
                            incoming,
                            header.size,
                            header.digest_algorithm,
                            self._spools,
                            self.transfer_idle_s,
                        )
                        try:
                            await self.services.book.complete_upload(task, header, upload)
                        finally:
                            # The spool goes back before the budget it came in under: the
                            # next upload is let in as this one's receipt is sent, and takes it.
                            upload.close()
                    finally:  # whatever became of the bytes, gRPC received them
                        self._free_memory.ask()
            except UploadRejected:
                raise
            except BaseException as exc:  # the call was cancelled or broke: no answer
                self.services.book.upload_broken(
                    task, f"the upload broke off ({type(exc).__name__})"
                )
                raise
        except UploadRejected as exc:
            # Its traceback's frames, and those of an error it was raised from, hold the
            # refused bytes, whose budget is already released.
            exc.__traceback__ = exc.__context__ = exc.__cause__ = None
            self.services.book.refuse(
                session, header.task_id, exc, claimed=(header.run_id, header.round)
            )
            yield _refused(exc)
            return
        yield pb.UploadReply(receipt=pb.UploadReceipt(accepted=True))


async def _receive(
    incoming: AsyncIterator[frames.UploadFrame],
    size: int,
    algorithm: str,
    pool: SpoolPool,
    idle_s: float,
) -> Received:
    """The upload's bytes in a spool from `pool`, with their digest of `algorithm`. A site that
    sends less than a chunk's bytes (`blobs.CHUNK_BYTES`) in `idle_s` is refused: its upload
    holds a place in the upload budget, which others wait for (a trickle of small messages
    would keep it for ever)."""
    try:
        file = pool.take()
    except OSError as exc:  # no spool could be made (its folder, its disk)
        raise _spool_failed(exc) from None
    scan = FiniteScan(size)
    # `algorithm` is one of digests.ACCEPTED (`admit_upload`).
    blob = Incoming(file, algorithm, watch=scan.add)
    loop = asyncio.get_running_loop()
    due, moved = loop.time() + idle_s, 0  # a chunk's bytes are due by then
    try:
        while True:
            try:
                async with asyncio.timeout_at(due):
                    message = await anext(incoming)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadRejected(
                    "upload_stalled",
                    f"less than {blobs.CHUNK_BYTES} bytes of the upload arrived in {idle_s:g} s",
                ) from None
            chunk = frames.chunk_of(message)
            if chunk is None:
                raise UploadRejected("bad_chunk", "a second header arrived inside the upload")
            if blob.received + len(chunk) > size:
                raise UploadRejected(
                    "oversized", f"upload exceeds its declared size of {size} bytes"
                )
            await blob.add(chunk)
            moved += len(chunk)
            if moved >= blobs.CHUNK_BYTES:
                due, moved = loop.time() + idle_s, 0
        if blob.received != size:
            raise UploadRejected(
                "size_mismatch", f"received {blob.received} bytes, header declared {size}"
            )
        digest = await blob.finish()
        fit(file, size)
        return Received(file, digest, pool.give, finite=scan.verdict())
    except OSError as exc:  # the spool's disk (full, gone): the site is not at fault
        file.close()
        raise _spool_failed(exc) from None
    except BaseException:
        with contextlib.suppress(Exception):
            await blob.finish()  # no chunk is still being written when the spool goes back
        pool.give(file)
        raise


def _spool_failed(exc: OSError) -> UploadRejected:
    return UploadRejected("spool_failed", f"the server could not keep the upload: {exc}")


def _refused(exc: UploadRejected) -> pb.UploadReply:
    return pb.UploadReply(
        receipt=pb.UploadReceipt(accepted=False, code=exc.code, message=exc.message)
    )
