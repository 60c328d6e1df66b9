"""The site's download over real gRPC against a scripted Download service: resumed after a
broken stream into its one pre-sized buffer (held once: handed over as bytes without a copy), and
refused when the bytes are not the blob, by its SHA-256 or by the BLAKE3 its offer gave."""

from __future__ import annotations

import asyncio
import hashlib
import io
import pathlib
import threading
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import blake3
import grpc
import pytest

from quorum.client import transfer
from quorum.client.transfer import BlobCache, FederationStub, download_model, upload
from quorum.errors import BlobError
from quorum.ports import free_port
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.wire import blobs, frames
from quorum.wire.channel import GRPC_OPTIONS
from tests.integration.harness import buffers_made, federation, run_config
from tests.integration.test_streamed_uploads import WideSite

BLOB = bytes(range(256)) * 20_000  # 5 MB: several 2 MiB chunks


class Scripted(pb_grpc.FederationServicer):  # type: ignore[misc]
    """Serves `data` from the requested offset; the first stream breaks after `break_after`
    chunks (UNAVAILABLE, as a restarting server's would)."""

    def __init__(self, data: bytes, break_after: int | None = None) -> None:
        self.data = data
        self.break_after = break_after
        self.offsets: list[int] = []

    async def Download(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BlobChunk]:
        self.offsets.append(request.offset)
        for i, chunk in enumerate(blobs.chunks(self.data, request.offset)):
            if self.break_after is not None and i == self.break_after:
                self.break_after = None
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            offset = request.offset + i * blobs.CHUNK_BYTES
            yield pb.BlobChunk(offset=offset, total_size=len(self.data), data=bytes(chunk))


async def fetch(
    service: Scripted, blob: bytes = BLOB, cache: BlobCache | None = None, *, check: str = ""
) -> bytes:
    """Downloads `blob` (its digest and size; `check`: its BLAKE3) from `service`."""
    offer = pb.TaskOffer(model_digest=blobs.digest(blob), model_size=len(blob), model_blake3=check)
    return await fetch_model(service, offer, BlobCache(keep=0) if cache is None else cache)


async def fetch_model(service: Scripted, offer: pb.TaskOffer, cache: BlobCache) -> bytes:
    """Downloads the model `offer` names from `service`, as a site's agent does."""
    port = free_port()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await download_model(FederationStub(channel), "s", offer, cache)
    finally:
        await server.stop(None)


def test_a_download_holds_the_blob_once() -> None:
    large = bytes(range(256)) * (96 * 1024)  # 24 MiB

    async def scenario() -> None:
        # Not returned from asyncio.run: on its way out it formats its main task, whose result
        # would be repr'd whole.
        tracemalloc.start()
        try:
            data = await fetch(Scripted(large), large)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert data == large
        # The buffer and a few chunks in flight; a copy of it (the bytes copied out of it) would
        # be twice the blob.
        assert peak < 1.5 * len(large)

    asyncio.run(scenario())


def test_a_spare_made_ahead_is_the_next_downloads_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    made = buffers_made(monkeypatch)
    cache = BlobCache(keep=0, spare=True)
    asyncio.run(cache.prepare(len(BLOB)))
    assert cache.spare_bytes == len(BLOB) and made == [len(BLOB)]
    assert asyncio.run(fetch(Scripted(BLOB), cache=cache)) == BLOB
    assert made == [len(BLOB)]  # landed in the spare, made no buffer of its own
    assert cache.spare_bytes == 0


def test_a_spare_of_another_size_or_beside_a_cached_blob_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = buffers_made(monkeypatch)
    cache = BlobCache(spare=True)
    asyncio.run(cache.prepare(len(BLOB) - 1))
    service = Scripted(BLOB)
    assert asyncio.run(fetch(service, cache=cache)) == BLOB
    assert made == [len(BLOB) - 1, len(BLOB)] and service.offsets == [0]
    assert cache.spare_bytes == 0
    # The model asked for next is the one cached: no download will take the spare, and the
    # task about to run must not hold it beside its own memory.
    asyncio.run(cache.prepare(len(BLOB)))
    assert asyncio.run(fetch(service, cache=cache)) == BLOB
    assert cache.spare_bytes == 0 and service.offsets == [0]


def test_a_spare_of_the_size_asked_for_is_kept_not_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = buffers_made(monkeypatch)
    cache = BlobCache(spare=True)
    asyncio.run(cache.prepare(len(BLOB)))
    asyncio.run(cache.prepare(len(BLOB)))  # an offer refused before its download, say
    assert made == [len(BLOB)] and cache.spare_bytes == len(BLOB)


@pytest.mark.parametrize("after", ["download", "prepare"])
def test_a_spare_still_being_made_when_its_session_ends_is_freed_before_the_next_buffer(
    monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    events: list[str] = []
    made: list[io.BytesIO] = []
    started, release = threading.Event(), threading.Event()
    make = blobs.sized_buffer

    def slow(size: int) -> io.BytesIO:
        events.append(f"make {size}")
        if size == len(BLOB) - 1:  # the spare: held until the test lets it finish
            started.set()
            release.wait(10)
        else:  # the next buffer: by now the first one's memory is free
            events.append(f"spare closed {made[0].closed}")
        made.append(make(size))
        return made[-1]

    monkeypatch.setattr(blobs, "sized_buffer", slow)
    cache = BlobCache(spare=True)
    settling = asyncio.Event()
    settle = cache.settle

    async def watched() -> None:
        settling.set()
        await settle()

    monkeypatch.setattr(cache, "settle", watched)

    async def scenario() -> None:
        making = asyncio.ensure_future(cache.prepare(len(BLOB) - 1))
        assert await asyncio.to_thread(started.wait, 10)
        making.cancel()  # as the session's end cancels the agent's work
        with pytest.raises(asyncio.CancelledError):
            await making
        assert cache.spare_bytes == 0
        if after == "download":
            following = asyncio.ensure_future(fetch(Scripted(BLOB), cache=cache))
        else:  # an offer refused before its download, say
            following = asyncio.ensure_future(cache.prepare(len(BLOB)))
        await asyncio.wait_for(settling.wait(), 10)  # it waits there for the first's thread
        assert events == [f"make {len(BLOB) - 1}"]
        release.set()
        await following

    asyncio.run(scenario())
    assert events == [f"make {len(BLOB) - 1}", f"make {len(BLOB)}", "spare closed True"]
    assert cache.spare_bytes == (len(BLOB) if after == "prepare" else 0)


def test_a_spare_that_cannot_be_made_is_not(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def none_left(size: int) -> io.BytesIO:
        raise MemoryError

    monkeypatch.setattr(blobs, "sized_buffer", none_left)
    cache = BlobCache(spare=True)
    asyncio.run(cache.prepare(len(BLOB)))
    assert cache.spare_bytes == 0
    assert f"event=spare_not_made bytes={len(BLOB)}" in caplog.text


def test_a_spare_of_a_size_no_buffer_has_is_not_made(caplog: pytest.LogCaptureFixture) -> None:
    # The size is the server's offer's: a site goes on serving whatever it says.
    cache = BlobCache(spare=True)
    asyncio.run(cache.prepare(2**64 - 1))
    assert cache.spare_bytes == 0
    assert "event=spare_not_made bytes=18446744073709551615" in caplog.text


def test_a_cache_without_spares_makes_none(monkeypatch: pytest.MonkeyPatch) -> None:
    made = buffers_made(monkeypatch)
    cache = BlobCache()
    asyncio.run(cache.prepare(len(BLOB)))
    assert cache.spare_bytes == 0 and made == []


def test_a_broken_download_resumes_where_it_stopped() -> None:
    service = Scripted(BLOB, break_after=2)
    data = asyncio.run(fetch(service))
    assert hashlib.sha256(data).hexdigest() == blobs.digest(BLOB) and data == BLOB
    assert service.offsets == [0, 2 * blobs.CHUNK_BYTES]


class Flaky(Scripted):
    """Every stream breaks after one chunk, or (`stuck`) before its first."""

    def __init__(self, data: bytes, stuck: bool = False) -> None:
        super().__init__(data)
        self.stuck = stuck

    async def Download(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.BlobChunk]:
        self.offsets.append(request.offset)
        if not self.stuck:
            chunk = bytes(next(iter(blobs.chunks(self.data, request.offset))))
            yield pb.BlobChunk(offset=request.offset, total_size=len(self.data), data=chunk)
        if request.offset + blobs.CHUNK_BYTES < len(self.data) or self.stuck:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


def test_a_download_that_breaks_often_goes_on_while_it_moves() -> None:
    # Six streams, each broken after a chunk: every break after progress is a first failure.
    large = bytes(range(256)) * (6 * blobs.CHUNK_BYTES // 256)
    service = Flaky(large)
    assert asyncio.run(fetch(service, large)) == large
    assert service.offsets == [i * blobs.CHUNK_BYTES for i in range(6)]
    # A download that moves nothing is given up after three tries in a row.
    stuck = Flaky(large, stuck=True)
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(fetch(stuck, large))
    assert stuck.offsets == [0, 0, 0]


@pytest.mark.parametrize(
    ("served", "match"),
    [
        (BLOB + b"x", "longer than"),
        (BLOB[:-1] + b"x", "does not match its"),
        (BLOB[:-10], f"ended at {len(BLOB) - 10} of {len(BLOB)} bytes"),
    ],
    ids=["longer", "other-bytes", "shorter"],
)
@pytest.mark.parametrize("check", ["", blake3.blake3(BLOB).hexdigest()], ids=["sha256", "blake3"])
def test_bytes_that_are_not_the_blob_are_refused(served: bytes, match: str, check: str) -> None:
    if match == "does not match its":  # by the digest the offer gave
        match += " blake3" if check else " sha256"
    with pytest.raises(BlobError, match=match):
        asyncio.run(fetch(Scripted(served), check=check))


def test_a_download_checked_by_its_blake3_is_kept_under_its_name_not_yet_checked() -> None:
    cache = BlobCache()
    data = asyncio.run(fetch(Scripted(BLOB), cache=cache, check=blake3.blake3(BLOB).hexdigest()))
    assert data == BLOB
    assert asyncio.run(cache.get(blobs.digest(BLOB))) == (data, False)
    assert asyncio.run(fetch(Scripted(BLOB), cache=cache)) is data  # checked by SHA-256 now
    assert asyncio.run(cache.get(blobs.digest(BLOB))) == (data, True)


def test_a_secure_aggregation_model_is_checked_by_its_name() -> None:
    # A server could send each site other bytes with their own BLAKE3 under one name; the
    # round's signed context names the model by SHA-256, so that is what a SecAgg fit checks.
    other = BLOB[:-1] + b"x"
    offer = pb.TaskOffer(
        model_digest=blobs.digest(BLOB),
        model_size=len(BLOB),
        model_blake3=blake3.blake3(other).hexdigest(),
        secagg=pb.SecAggSetup(),
    )
    with pytest.raises(BlobError, match="its sha256 digest"):
        asyncio.run(fetch_model(Scripted(other), offer, BlobCache(keep=0)))
    # Bytes cached under the name after a BLAKE3 check are checked again before a SecAgg fit
    # has them; those that are not the name's are fetched anew.
    cache = BlobCache()
    asyncio.run(cache.put(offer.model_digest, other, named=False))
    service = Scripted(BLOB)
    assert asyncio.run(fetch_model(service, offer, cache)) == BLOB
    assert service.offsets == [0]
    assert asyncio.run(cache.get(offer.model_digest)) == (BLOB, True)


def test_a_blake3_that_is_not_the_blobs_refuses_it() -> None:
    # The bytes are the ones the SHA-256 names; the BLAKE3 sent beside it decides.
    with pytest.raises(BlobError, match="does not match"):
        asyncio.run(fetch(Scripted(BLOB), check=blake3.blake3(b"another blob").hexdigest()))


def test_a_sites_stub_reads_each_chunk_as_a_view_of_its_frame() -> None:
    async def scenario() -> list[frames.ChunkView | pb.BlobChunk]:
        port = free_port()
        server = grpc.aio.server(options=GRPC_OPTIONS)
        pb_grpc.add_FederationServicer_to_server(Scripted(BLOB), server)  # protobuf's replies
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = FederationStub(channel).Download(pb.DownloadRequest(digest="d"))
                return [chunk async for chunk in call]
        finally:
            await server.stop(None)

    chunks = asyncio.run(scenario())
    assert all(isinstance(chunk, frames.ChunkView) for chunk in chunks)
    assert b"".join(bytes(chunk.data) for chunk in chunks) == BLOB
    assert [chunk.offset for chunk in chunks] == list(range(0, len(BLOB), blobs.CHUNK_BYTES))


def test_a_cache_folder_is_read_and_written_off_the_event_loop(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `quorum client run --cache-dir`: a model's file is read, hashed and written (with fsync)
    # in worker threads; the session's heartbeats go on meanwhile.
    threads: list[str] = []
    for owner, name in ((transfer, "_read_named"), (BlobCache, "_remember")):
        real = getattr(owner, name)

        def spy(*args: Any, real: Any = real, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    write_atomic = transfer.write_atomic

    def written(path: pathlib.Path, data: bytes) -> None:
        threads.append(threading.current_thread().name)
        write_atomic(path, data)

    monkeypatch.setattr(transfer, "write_atomic", written)
    asyncio.run(fetch(Scripted(BLOB), cache=BlobCache(tmp_path)))  # missed, then stored
    assert (tmp_path / blobs.digest(BLOB)).read_bytes() == BLOB
    found = BlobCache(tmp_path)  # a restarted agent finds it
    assert asyncio.run(fetch(Scripted(b""), cache=found)) == BLOB
    main = threading.main_thread().name
    # kept in memory, written (missed: no file read); read (found), kept in memory
    assert [name == main for name in threads] == [True, False, False, True]


@pytest.mark.parametrize("name", ["../../escape", "A" * 64, "ab" * 31, ""])
def test_a_blob_name_that_is_no_sha256_is_refused_before_anything_is_read(
    tmp_path: pathlib.Path, name: str
) -> None:
    # The name is a file's in the site's cache folder: a server's "../x" must not write there.
    offer = pb.TaskOffer(model_digest=name, model_size=len(BLOB))
    service = Scripted(BLOB)
    with pytest.raises(BlobError, match="no SHA-256 in hex"):
        asyncio.run(fetch_model(service, offer, BlobCache(tmp_path)))
    assert service.offsets == []
    assert list(tmp_path.iterdir()) == []


class RefusesMidway(pb_grpc.FederationServicer):  # type: ignore[misc]
    """Grants an upload, takes one chunk, then refuses it (as a server whose spool's disk
    filled does) and ends the call while the site still has chunks to send."""

    async def Upload(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.UploadReply]:
        incoming = aiter(request_iterator)
        await anext(incoming)
        yield pb.UploadReply(grant=pb.UploadGrant())
        await anext(incoming)
        yield pb.UploadReply(
            receipt=pb.UploadReceipt(accepted=False, code="spool_failed", message="disk full")
        )


def test_a_refusal_before_the_last_chunk_is_read_as_the_uploads_receipt() -> None:
    data = blobs.Pieces(bytes(64 << 20))  # far more than the call's windows hold

    async def scenario() -> pb.UploadReceipt:
        port = free_port()
        server = grpc.aio.server(options=GRPC_OPTIONS)
        pb_grpc.add_FederationServicer_to_server(RefusesMidway(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as ch:
                header = pb.UploadHeader(size=data.size)
                return await asyncio.wait_for(upload(FederationStub(ch), header, data), 60)
        finally:
            await server.stop(None)

    receipt = asyncio.run(scenario())
    assert (receipt.accepted, receipt.code, receipt.message) == (False, "spool_failed", "disk full")


def test_sites_sharing_a_cache_download_a_model_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A simulation host's sites share one cache: a cohort's offers come together, and one
    # download serves them all (each made its own, six buffers of the model, before).
    wide = "tests.integration.test_streamed_uploads:WIDE"  # 32 MiB, several chunks
    made = buffers_made(monkeypatch)
    sites = 6

    async def scenario() -> dict[str, Any]:
        cfg = run_config(
            task=wide, rounds=1, min_fit_sites=sites, min_available_sites=sites, fraction_evaluate=0
        )
        async with federation(tmp_path, [cfg]) as fed:
            cache = BlobCache(keep=2)  # as quorum.sim.host makes it
            for i in range(sites):
                fed.add_site(f"s{i}", "", site_task=WideSite(1.0), task_ref=wide, cache=cache)
            run = await fed.wait_run(timeout=120)
            detail: dict[str, Any] = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            return detail

    detail = asyncio.run(scenario())
    fits = [p for p in detail["participants"] if p["kind"] == "fit"]
    assert [p["status"] for p in fits] == ["accepted"] * sites
    model = 32 << 20
    assert sum(1 for p in fits if p["bytes_out"] >= model) == 1
    assert sum(1 for size in made if size >= model) == 1


def test_a_model_found_in_the_cache_folder_lets_the_spare_go_before_it_is_read(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / blobs.digest(BLOB)).write_bytes(BLOB)
    cache = BlobCache(tmp_path, spare=True)
    asyncio.run(cache.prepare(len(BLOB)))
    assert cache.spare_bytes == len(BLOB)
    spare_as_read: list[int] = []
    read = transfer._read_named

    def spy(path: pathlib.Path, key: str) -> bytes | None:
        spare_as_read.append(cache.spare_bytes)
        return read(path, key)

    monkeypatch.setattr(transfer, "_read_named", spy)
    assert asyncio.run(fetch(Scripted(b""), cache=cache)) == BLOB
    assert spare_as_read == [0]  # never the file's bytes beside the spare
