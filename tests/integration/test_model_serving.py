"""The server reads the models it serves off its event loop: a read that waits on the disk (a
cold page cache, made deterministic here by a file whose reads wait until the test lets them
go) holds up no other session. The real server and real gRPC downloads over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np
import pytest

from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.server.async_driver import AsyncDriver
from quorum.server.checkpoints import Checkpoints
from quorum.server.rounds import model_phase
from quorum.server.sessions import Session
from quorum.server.sync_driver import SyncDriver
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile, BlobWriter
from quorum.wire.channel import GRPC_OPTIONS
from tests.hostile_site import HostileSite
from tests.integration.harness import TASK, Federation, federation, run_config
from tests.integration.test_large_models import fetch

GATE_S = 20.0
"""How long a held read waits to be let go: only a read made on the event loop waits it out
(the test, on that loop, cannot let it go), and then it fails."""


class HeldFile(BlobFile):
    """A model file whose reads, once `hold()` is called, wait until `release` is set."""

    def __init__(self, path: pathlib.Path, digest: str | None = None) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.held = False
        self.value_reads = 0
        super().__init__(path, digest)  # reads the header

    def hold(self) -> None:
        self.held = True

    def _wait(self) -> None:
        if self.held:
            self.entered.set()
            if not self.release.wait(GATE_S):
                raise TimeoutError("the read was never let go: the event loop was blocked")

    def read(self, offset: int, length: int) -> bytes:
        self._wait()
        return super().read(offset, length)

    def values(
        self, block_bytes: int = 1 << 23, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        self.value_reads += 1
        self._wait()
        return super().values(block_bytes, start, stop)

    def flat(self) -> np.ndarray:
        self._wait()
        return super().flat()


class HeldCheckpoints(Checkpoints):
    """Checkpoints whose models open as held files (`opened` is set with the file)."""

    def __init__(self, root: pathlib.Path) -> None:
        super().__init__(root)
        self.opened = threading.Event()
        self.file: HeldFile | None = None

    def open(self, run_id: str, round_no: int) -> tuple[BlobFile, dict[str, np.ndarray]]:
        model, state = super().open(run_id, round_no)
        self.file = HeldFile(model.path)
        self.file.hold()
        self.opened.set()
        return self.file, state


def _model(path: pathlib.Path, numel: int, held: bool) -> BlobFile:
    with BlobWriter(path) as writer:
        blobs.write({"w": np.arange(numel, dtype=np.float32)}, writer)
        model = writer.finish()
    return HeldFile(path, model.digest) if held else model


@dataclass
class HeldRun:
    """A sync run's driver, running, whose checkpoint opened as `file` (held), and a model
    served beside it with a session to fetch it."""

    run_id: str
    running: asyncio.Future[None]
    file: HeldFile
    other: BlobFile
    session: Session


async def _held_run(
    fed: Federation, params: blobs.Params, done: int, sites: int, mode: str = "sync"
) -> HeldRun:
    """A run (`mode`) of one round whose checkpoint of round `done` (`params`) opens as a held
    file, with `sites` sites of its task connected, started and waiting on its first read."""
    services = fed.services
    record = services.store.create_run(
        run_config(rounds=1, min_available_sites=sites, min_fit_sites=sites, mode=mode)
    )
    staged = services.checkpoints.stage_params(record.id, done, params)
    # FedBuff's checkpointed state is its version (no momentum by default).
    state = {"fedbuff.version": np.array([done], np.int64)} if mode == "async" else {}
    services.checkpoints.save(record.id, done, staged, state)
    if done:
        attempt = services.store.start_round(record.id, done)
        services.store.complete_round(record.id, done, attempt, staged.digest, {})
    held = HeldCheckpoints(services.checkpoints.root)
    driver = (AsyncDriver if mode == "async" else SyncDriver)(
        replace(services, checkpoints=held), record
    )
    other = _model(fed.state_dir / "other", 1000, held=False)
    services.blobs.put(other)
    session = services.sessions.open("reader", TASK)
    for n in range(sites - 1):
        services.sessions.open(f"site-{n}", TASK)
    running = asyncio.ensure_future(driver.run())
    assert await asyncio.to_thread(held.opened.wait, GATE_S) and held.file is not None
    assert await asyncio.to_thread(held.file.entered.wait, GATE_S)
    return HeldRun(record.id, running, held.file, other, session)


async def _fetch(fed: Federation, session: Session, model: BlobFile) -> None:
    async with grpc.aio.insecure_channel(fed.address, options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.FederationStub(channel)
        assert await fetch(stub, session.id, model.digest, 0) == model.digest


def test_a_download_waiting_on_the_disk_holds_up_no_other_session(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            services = fed.server.coordinator.services
            held = _model(tmp_path / "held", 5 * 2**18, held=True)  # 5 MiB: several reads
            other = _model(tmp_path / "other", 1000, held=False)
            assert isinstance(held, HeldFile)
            services.blobs.put(held)
            services.blobs.put(other)
            held.hold()
            first = services.sessions.open("first", "task")
            second = services.sessions.open("second", "task")
            async with grpc.aio.insecure_channel(fed.address, options=GRPC_OPTIONS) as channel:
                stub = pb_grpc.FederationStub(channel)
                waiting = asyncio.ensure_future(fetch(stub, first.id, held.digest, 0))
                assert await asyncio.to_thread(held.entered.wait, GATE_S)
                # The first download's read is held; another session's download goes through.
                assert await fetch(stub, second.id, other.digest, 0) == other.digest
                assert not waiting.done()
                held.release.set()
                assert await waiting == held.digest

    asyncio.run(scenario())


def test_a_phases_model_is_checked_off_the_event_loop_once(tmp_path: pathlib.Path) -> None:
    """model_phase reads the whole model for its NaN check: in a worker thread, and once per
    file however many phases serve it (an async run offers one version to every site)."""

    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            services = fed.server.coordinator.services
            held = _model(tmp_path / "held", 1000, held=True)
            other = _model(tmp_path / "other", 1000, held=False)
            assert isinstance(held, HeldFile)
            services.blobs.put(other)
            held.hold()
            session = services.sessions.open("reader", "task")
            checking = asyncio.ensure_future(
                model_phase(services, "fit", "run", 1, 1, held, held.layout, 100)
            )
            assert await asyncio.to_thread(held.entered.wait, GATE_S)
            async with grpc.aio.insecure_channel(fed.address, options=GRPC_OPTIONS) as channel:
                stub = pb_grpc.FederationStub(channel)
                assert await fetch(stub, session.id, other.digest, 0) == other.digest
            assert not checking.done()
            held.release.set()
            assert (await checking).model_digest == held.digest
            again = await model_phase(services, "evaluate", "run", 1, 1, held, held.layout, 100)
            assert again.model_digest == held.digest and held.value_reads == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_restarted_runs_checkpoint_is_checked_off_the_event_loop(
    tmp_path: pathlib.Path, mode: str
) -> None:
    """A run resumed from a completed round first hashes and NaN-checks its checkpoint (the
    whole model): in a worker thread, while another session's download goes through."""

    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            params = {"w": np.arange(1000, dtype=np.float32)}
            run = await _held_run(fed, params, done=1, sites=1, mode=mode)
            await _fetch(fed, run.session, run.other)
            assert not run.running.done()
            run.file.release.set()
            await run.running  # round 1 was its last: the run completes once resumed
            assert fed.services.store.run(run.run_id).status == "completed"

    asyncio.run(scenario())


def test_a_rounds_flat_model_is_made_off_the_event_loop(tmp_path: pathlib.Path) -> None:
    """A sync round reads a model of several dtypes whole into one float64 vector: in a worker
    thread, while another session's download goes through."""

    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            params = {
                "w": np.arange(1000, dtype=np.float32),
                "steps": np.arange(4, dtype=np.int64),
            }
            run = await _held_run(fed, params, done=0, sites=1)
            await _fetch(fed, run.session, run.other)
            assert not run.running.done()
            run.file.release.set()
            # The round goes on to offer its fit task to a site that will never answer.
            run.running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.running

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_run_stopped_while_it_resumes_ends_only_once_its_thread_has(
    tmp_path: pathlib.Path, mode: str
) -> None:
    """A run cancelled while its checkpoint is read in a worker thread ends once the thread is
    over: what the thread does next (the store's rows, an initial model) cannot race what the
    cancellation lets run next (a restart of the same run)."""

    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            params = {"w": np.arange(1000, dtype=np.float32)}
            run = await _held_run(fed, params, done=1, sites=1, mode=mode)
            run.running.cancel()
            finished, _ = await asyncio.wait({run.running}, timeout=0.5)
            assert not finished  # waiting for the held read
            run.file.release.set()
            with pytest.raises(asyncio.CancelledError):
                await run.running

    asyncio.run(scenario())


@pytest.mark.parametrize("window_kb", [256, 0], ids=["fixed", "probed"])
def test_the_federation_server_takes_its_stream_window_from_its_config(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, window_kb: int
) -> None:
    built: list[dict[str, object]] = []
    make = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> Any:
        built.append(dict(kwargs["options"]))
        return make(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", spy)

    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=1)], stream_window_kb=window_kb):
            pass

    asyncio.run(scenario())
    assert len(built) == 1
    if window_kb:  # fixed, not grown by bandwidth-delay probing (`channel.server_options`)
        assert built[0]["grpc.http2.bdp_probe"] == 0
        assert built[0]["grpc.http2.lookahead_bytes"] == window_kb * 1024
    else:  # gRPC's own probing sizes it
        assert "grpc.http2.bdp_probe" not in built[0]
        assert "grpc.http2.lookahead_bytes" not in built[0]


def test_downloads_nobody_reads_give_their_places_to_the_next_after_the_idle_time(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A site opens as many downloads as the server streams at once and reads one chunk of each:
    # after transfer_idle_timeout_s each is ended, and another site's download goes through.
    wide = "tests.integration.test_streamed_uploads:WIDE"  # 32 MiB: more than the windows hold

    def open_unread(site: HostileSite, digest: str) -> Any:
        call = site.stub.Download(pb.DownloadRequest(session_id=site.session_id, digest=digest))
        next(call)
        return call

    def download(site: HostileSite, digest: str) -> int:
        request = pb.DownloadRequest(session_id=site.session_id, digest=digest)
        return sum(len(c.data) for c in site.stub.Download(request, timeout=60))

    async def scenario() -> None:
        cfg = run_config(task=wide, rounds=1, min_fit_sites=2, min_available_sites=2)
        async with federation(
            tmp_path, [cfg], max_inflight_downloads=2, transfer_idle_timeout_s=3
        ) as fed:
            m = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), wide)
            h = await asyncio.to_thread(HostileSite, fed.address, fed.register("h"), wide)
            try:
                offer = await asyncio.to_thread(m.next_fit)
                held = [
                    await asyncio.to_thread(open_unread, m, offer.model_digest) for _ in range(2)
                ]
                got = await asyncio.to_thread(download, h, offer.model_digest)
                assert got == offer.model_size
                # Read at last, a download that was let go ends with why.
                ends = [await asyncio.to_thread(drain, call) for call in held]
                assert grpc.StatusCode.DEADLINE_EXCEEDED in ends
                assert set(ends) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK}
            finally:
                m.close()
                h.close()

    def drain(call: Any) -> grpc.StatusCode:
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    asyncio.run(scenario())
    assert "event=download_stalled site=m idle_s=3" in caplog.text


def test_a_session_has_a_bounded_number_of_downloads_open(tmp_path: pathlib.Path) -> None:
    # One is streamed (and left unread), the others wait for its place: past four, the session
    # is refused more at once, so that it cannot queue calls without bound.
    wide = "tests.integration.test_streamed_uploads:WIDE"

    def attempt(site: HostileSite, digest: str) -> grpc.StatusCode:
        request = pb.DownloadRequest(session_id=site.session_id, digest=digest)
        try:
            next(site.stub.Download(request, timeout=2))
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    async def scenario() -> None:
        cfg = run_config(task=wide, rounds=1, min_fit_sites=1, min_available_sites=1)
        async with federation(tmp_path, [cfg], max_inflight_downloads=1) as fed:
            m = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), wide)
            try:
                offer = await asyncio.to_thread(m.next_fit)
                request = pb.DownloadRequest(session_id=m.session_id, digest=offer.model_digest)
                first = m.stub.Download(request)
                await asyncio.to_thread(next, first)  # streamed, never read again
                waiting = [m.stub.Download(request) for _ in range(3)]  # wait for its place
                codes = [await asyncio.to_thread(attempt, m, offer.model_digest) for _ in range(5)]
                assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
                for call in [first, *waiting]:
                    call.cancel()
            finally:
                m.close()

    asyncio.run(scenario())
