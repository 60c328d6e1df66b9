"""The site agent: one session with the server at a time, re-established with jittered
exponential backoff after any disconnect; tasks run one after another off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quorum import __version__
from quorum.client import gossip, secure_fit
from quorum.client.compression import Residuals, encode_update
from quorum.client.gossip_models import GossipModels
from quorum.client.reachability import describe
from quorum.client.slots import Slots
from quorum.client.stages import training_awaited
from quorum.client.transfer import BlobCache, FederationStub, download_model, upload
from quorum.errors import AuthError, BudgetExhausted, QuorumError
from quorum.fitconfig import FitConfig
from quorum.identity import public_bytes, sign_join
from quorum.logs import SiteLog
from quorum.proto import federation_pb2 as pb
from quorum.task import FitResult, SiteTask
from quorum.wire import blobs, digests
from quorum.wire.channel import GRPC_OPTIONS, STREAM_END
from quorum.wire.codecs import make_codec

log = logging.getLogger("quorum.client")

LASTING_SESSION_S = 30.0


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff (sleep uniform in [0, min(cap, base * 2^n)])."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap_s, self.base_s * 2 ** min(failures, 16)))


StageHook = Callable[[int, str], None]
"""Called as a site begins a stage of a round: "fit" when a fit task starts, then under
SecAgg "advertise-keys", "share-keys", "masked-input", "unmask", and in a gossip round
"gossip-keys", "gossip-send", "gossip-mix". Fault injection uses it."""


class SimulatedCrash(Exception):
    """Raised by a stage hook to make the agent vanish on the spot, as a killed process would:
    no answer, no goodbye, no reconnect."""


class SiteAgent:
    def __init__(
        self,
        server: str,
        key: Ed25519PrivateKey,
        task_ref: str,
        site_task: SiteTask,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        cache: BlobCache | None = None,
        backoff: Backoff = Backoff(),
        on_stage: StageHook | None = None,
        gossip_models: GossipModels | None = None,
        channel: grpc.aio.Channel | None = None,
        slots: Slots | None = None,
        name: str | None = None,
        give_up_after_s: float | None = None,
        residuals: Residuals | None = None,
    ) -> None:
        """`gossip_models` keeps this site's own model of each gossip run (in memory when
        not given: a restarted agent then starts such a run again from its initial model).
        Many virtual sites of a simulation host share one `channel` (their sessions are
        streams of one HTTP/2 connection; without it each session dials its own) and one
        `slots` (their fits share the host's cores). `name` tags the agent's log lines.
        `residuals` keeps the error feedback of compressed runs across restarts (in memory
        when not given)."""
        self.server = server
        self.key = key
        self.task_ref = task_ref
        self.site_task = site_task
        self.credentials = credentials
        self.cache = cache or BlobCache()
        self.backoff = backoff
        self.on_stage = on_stage
        self.gossip_models = gossip_models or GossipModels()
        self.shared_channel = channel
        self.slots = Slots(1, within=slots)  # one task of this site at a time (`slots`)
        self.log: logging.Logger | SiteLog = SiteLog(log, {"site": name}) if name else log
        self.give_up_after_s = give_up_after_s
        self.residuals = residuals or Residuals()
        self.residuals.log = self.log  # its lines name the site
        self._joined = False  # whether the current session got as far as the server's welcome
        self._upload_digest = digests.SHA256  # this session's server's choice (its welcome)
        self._rng = random.Random()
        # Server messages for the secure-aggregation task in progress, by task id.
        self._inboxes: dict[str, asyncio.Queue[pb.ServerMessage]] = {}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serves until `stop` is set; reconnects after every disconnect. With
        `give_up_after_s`, raises QuorumError once that long has passed without a session."""
        stop = stop or asyncio.Event()
        failures = 0  # sessions since the last one that lasted LASTING_SESSION_S
        last_session = time.monotonic()
        while not stop.is_set():
            self._joined = False
            started = time.monotonic()
            try:
                await self._session(stop)
            except (grpc.aio.AioRpcError, ConnectionError, OSError, StopAsyncIteration) as exc:
                problem = describe(exc, tls=self.credentials is not None)
                self.log.warning("event=disconnected server=%s error=%s", self.server, problem)
                _let_go(exc)
                if (
                    not self._joined
                    and self.give_up_after_s is not None
                    and time.monotonic() - last_session >= self.give_up_after_s
                ):
                    raise QuorumError(
                        f"no session with {self.server} for {self.give_up_after_s:g} s, giving "
                        f"up; last error: {problem}"
                    ) from None
            if self._joined:
                last_session = time.monotonic()
            # Only a session that lasted starts the next outage from the base delay: sessions
            # welcomed and dropped at once (two agents on one key, a server restarting over and
            # over) back off as failures do.
            if self._joined and time.monotonic() - started >= LASTING_SESSION_S:
                failures = 0
            delay = self.backoff.delay(failures, self._rng)
            failures += 1
            if self.give_up_after_s is not None:  # one more try as the time runs out, no later
                left = last_session + self.give_up_after_s - time.monotonic()
                delay = min(delay, max(left, 0.0))
            self.log.info("event=reconnect_wait seconds=%.2f", delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    def _channel(self) -> contextlib.AbstractAsyncContextManager[grpc.aio.Channel]:
        """The session's channel: the shared one (left open), else a new one of its own."""
        if self.shared_channel is not None:
            return contextlib.nullcontext(self.shared_channel)
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.server, options=GRPC_OPTIONS)
        return grpc.aio.secure_channel(self.server, self.credentials, options=GRPC_OPTIONS)

    async def _session(self, stop: asyncio.Event) -> None:
        async with self._channel() as channel:
            stub = FederationStub(channel)
            outbox: asyncio.Queue[pb.SiteMessage] = asyncio.Queue()

            async def outgoing() -> AsyncIterator[pb.SiteMessage]:
                while True:
                    yield await outbox.get()

            call = stub.Session(outgoing())
            outbox.put_nowait(
                pb.SiteMessage(
                    hello=pb.Hello(
                        public_key=public_bytes(self.key),
                        agent_version=__version__,
                        task=self.task_ref,
                    )
                )
            )
            try:
                challenge = await call.read()
                if challenge is STREAM_END or challenge.WhichOneof("kind") != "challenge":
                    raise ConnectionError("server did not send a challenge")
                outbox.put_nowait(
                    pb.SiteMessage(
                        join=pb.JoinProof(
                            signature=sign_join(
                                self.key, challenge.challenge.server_id, challenge.challenge.nonce
                            )
                        )
                    )
                )
                welcome = await call.read()
                if welcome is STREAM_END or welcome.WhichOneof("kind") != "welcome":
                    raise ConnectionError("server did not welcome this site")
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                ):
                    raise AuthError(f"the server refused this site: {exc.details()}") from None
                raise
            info = welcome.welcome
            self._joined = True
            self._upload_digest = digests.choose(info.upload_digests)
            self.log.info("event=joined site=%s server=%s", info.site_name, self.server)
            tasks: asyncio.Queue[pb.TaskOffer] = asyncio.Queue()
            workers = [
                asyncio.create_task(self._heartbeat(outbox, info.heartbeat_interval_s)),
                asyncio.create_task(self._work(stub, info.session_id, tasks, outbox)),
            ]
            stopper = asyncio.create_task(stop.wait())
            try:
                while True:
                    reader = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait(
                        {reader, stopper, *workers}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if stopper in done or any(w in done for w in workers):
                        reader.cancel()
                        call.cancel()
                        for worker in done & set(workers):
                            worker.result()  # a transfer failed: end the session, rejoin
                        return
                    message = reader.result()
                    if message is STREAM_END:
                        raise ConnectionError("the server closed the session")
                    kind = message.WhichOneof("kind")
                    if kind == "task":
                        tasks.put_nowait(message.task)
                    elif kind == "secagg":
                        self._route(message.secagg.task_id, message)
                    elif kind == "gossip":
                        self._route(message.gossip.task_id, message)
                    elif kind == "notice":
                        self._route(message.notice.task_id, message)
                        self.log.warning(
                            "event=server_notice task_id=%s code=%s message=%s",
                            message.notice.task_id,
                            message.notice.code,
                            message.notice.message,
                        )
            finally:
                stopper.cancel()
                call.cancel()  # also when the server ended it: its request stream's task ends
                for worker in workers:
                    worker.cancel()

    def _route(self, task_id: str, message: pb.ServerMessage) -> None:
        inbox = self._inboxes.get(task_id)
        if inbox is not None:
            inbox.put_nowait(message)

    def _stage(self, round_no: int, stage: str) -> None:
        if self.on_stage is not None:
            self.on_stage(round_no, stage)

    async def _heartbeat(self, outbox: asyncio.Queue[pb.SiteMessage], interval: float) -> None:
        while True:
            await asyncio.sleep(max(interval, 0.1))
            outbox.put_nowait(
                pb.SiteMessage(heartbeat=pb.Heartbeat(sent_unix_ms=int(time.time() * 1000)))
            )

    async def _work(
        self,
        stub: FederationStub,
        session_id: str,
        tasks: asyncio.Queue[pb.TaskOffer],
        outbox: asyncio.Queue[pb.SiteMessage],
    ) -> None:
        while True:
            offer = await tasks.get()
            started = time.monotonic()
            try:
                await self._handle(stub, session_id, offer, outbox, started)
            except (asyncio.CancelledError, grpc.aio.AioRpcError, SimulatedCrash):
                raise
            except BudgetExhausted as exc:  # the site's own privacy budget: a refusal
                self.log.warning("event=budget_exhausted task_id=%s detail=%s", offer.task_id, exc)
                _reply(
                    outbox,
                    offer,
                    pb.RESULT_STATUS_REFUSED,
                    started,
                    error=f"{BudgetExhausted.code}: {exc}",
                )
            except Exception as exc:  # the user's task failed: report it, keep serving
                self.log.exception("event=task_failed task_id=%s", offer.task_id)
                _reply(
                    outbox,
                    offer,
                    pb.RESULT_STATUS_FAILED,
                    started,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                if offer.kind == pb.TASK_KIND_FIT and not offer.HasField("gossip"):
                    # The fit has let its memory go: the next model's buffer is made now, while
                    # the site waits for its next task (a cache without a spare does nothing).
                    await self.cache.prepare(offer.model_size)

    async def _handle(
        self,
        stub: FederationStub,
        session_id: str,
        offer: pb.TaskOffer,
        outbox: asyncio.Queue[pb.SiteMessage],
        started: float,
    ) -> None:
        if offer.task != self.task_ref:
            _reply(
                outbox,
                offer,
                pb.RESULT_STATUS_REFUSED,
                started,
                error=f"this agent runs task {self.task_ref!r}, not {offer.task!r}",
            )
            return
        offered = FitConfig.from_json(offer.config_json)
        config = offered.as_mapping()
        if offer.kind == pb.TASK_KIND_FIT:
            self._stage(offer.round, "fit")
        if offer.kind == pb.TASK_KIND_FIT and offer.HasField("secagg"):
            await self._secure_fit(stub, session_id, offer, outbox, config, started)
            return
        if offer.kind == pb.TASK_KIND_FIT and offer.HasField("gossip"):
            await self._gossip(stub, session_id, offer, outbox, config, started)
            return
        model = await download_model(stub, session_id, offer, self.cache)
        params = blobs.decode(model)
        if offer.kind == pb.TASK_KIND_FIT:
            fit = await self.slots.run(self.site_task.fit, params, config)
            codec = make_codec(offered.compression) if offered.compression else None
            residual = None  # what a compressed upload left out, for the site's next ones
            if codec is None:
                # Sent from the trained tensors themselves: no encoded copy of the model.
                data = await asyncio.to_thread(blobs.pieces, fit.params)
            else:
                data, residual = await asyncio.to_thread(
                    encode_update,
                    codec,
                    model,
                    fit.params,
                    self.residuals,
                    offer.run_id,
                    offer.round,
                    # a sync round may run again; async fits share round numbers
                    offered.model_version is None,
                )
            receipt = await _upload_update(
                stub,
                session_id,
                offer,
                started,
                data,
                self._upload_digest,
                fit.metrics,
                fit.num_examples,
            )
            if receipt.accepted:
                if residual is not None:  # kept once taken: a refused update loses only itself
                    try:
                        await asyncio.to_thread(
                            self.residuals.save, offer.run_id, offer.round, residual
                        )
                    except OSError as exc:  # the update is in all the same: not a failed task
                        self.log.warning(
                            "event=residual_not_saved run_id=%s round=%d error=%s detail=this "
                            "run's next update starts its error feedback from zero",
                            offer.run_id,
                            offer.round,
                            exc,
                        )
                self.log.info("event=update_accepted run_id=%s round=%d", offer.run_id, offer.round)
            else:
                self.log.warning(
                    "event=update_refused round=%d code=%s message=%s",
                    offer.round,
                    receipt.code,
                    receipt.message,
                )
        else:
            ev = await self.slots.run(self.site_task.evaluate, params, config)
            _reply(
                outbox,
                offer,
                pb.RESULT_STATUS_OK,
                started,
                num_examples=ev.num_examples,
                metrics=ev.metrics,
            )

    async def _secure_fit(
        self,
        stub: FederationStub,
        session_id: str,
        offer: pb.TaskOffer,
        outbox: asyncio.Queue[pb.SiteMessage],
        config: dict[str, object],
        started: float,
    ) -> None:
        async def train() -> tuple[bytes, FitResult]:
            model = await download_model(stub, session_id, offer, self.cache)
            fit = await self.slots.run(self.site_task.fit, blobs.decode(model), config)
            return model, fit

        async def send_masked(data: blobs.Buffer, metrics: dict[str, float]) -> pb.UploadReceipt:
            # The weight is inside the masked vector: the header's num_examples stays 0.
            return await _upload_update(
                stub,
                session_id,
                offer,
                started,
                blobs.Pieces(data),
                self._upload_digest,
                metrics,
                0,
            )

        training = asyncio.ensure_future(train())
        self._inboxes[offer.task_id] = asyncio.Queue()
        try:
            async with training_awaited(training, self.log, offer.task_id):
                await secure_fit.run(
                    self.key,
                    offer,
                    lambda reply: outbox.put_nowait(pb.SiteMessage(secagg=reply)),
                    self._inboxes[offer.task_id],
                    training,
                    send_masked,
                    lambda stage: self._stage(offer.round, stage),
                )
        finally:
            del self._inboxes[offer.task_id]
        self.log.info("event=secure_update_done run_id=%s round=%d", offer.run_id, offer.round)

    async def _gossip(
        self,
        stub: FederationStub,
        session_id: str,
        offer: pb.TaskOffer,
        outbox: asyncio.Queue[pb.SiteMessage],
        config: dict[str, object],
        started: float,
    ) -> None:
        inbox: asyncio.Queue[pb.ServerMessage] = asyncio.Queue()
        self._inboxes[offer.task_id] = inbox
        link = gossip.Link(
            stub,
            session_id,
            self.cache,
            lambda reply: outbox.put_nowait(pb.SiteMessage(gossip=reply)),
            inbox,
        )
        try:
            await gossip.run(
                self.key,
                offer,
                config,
                self.site_task,
                self.slots,
                self.gossip_models,
                link,
                lambda stage: self._stage(offer.round, stage),
                started,
            )
        finally:
            del self._inboxes[offer.task_id]


def _let_go(exc: BaseException) -> None:
    """Clears the locals of the frames that `exc`, and the errors it came from, passed through.

    A session's error is kept by the task it ended and holds that task's frames, a fit's model
    and update among their locals, in a reference cycle that only the cyclic collector frees,
    which may be after the next session has downloaded a model beside them. Every frame it
    reaches has finished by then (`run`'s own, still running, is left as it is); on Python
    3.11-3.12 clearing a suspended coroutine's frame would close it, so an error that a live
    task still awaits must never reach here."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        pending += [error.__cause__, error.__context__]


async def _upload_update(
    stub: FederationStub,
    session_id: str,
    offer: pb.TaskOffer,
    started: float,
    data: blobs.Pieces,
    algorithm: str,
    metrics: dict[str, float],
    num_examples: int,
) -> pb.UploadReceipt:
    """Uploads the answer to a fit offer: a model update, or under SecAgg a masked vector."""
    # Hashed off the event loop: a large update takes seconds, and the session's heartbeats
    # and other tasks' messages must go on meanwhile.
    digest = await asyncio.to_thread(data.digest, algorithm)
    return await upload(
        stub,
        pb.UploadHeader(
            session_id=session_id,
            task_id=offer.task_id,
            run_id=offer.run_id,
            round=offer.round,
            digest=digest,
            digest_algorithm=algorithm,
            size=data.size,
            num_examples=num_examples,
            metrics_json=json.dumps(metrics),
            duration_s=time.monotonic() - started,
        ),
        data,
    )


def _reply(
    outbox: asyncio.Queue[pb.SiteMessage],
    offer: pb.TaskOffer,
    status: pb.ResultStatus,
    started: float,
    *,
    error: str = "",
    num_examples: int = 0,
    metrics: dict[str, float] | None = None,
) -> None:
    outbox.put_nowait(
        pb.SiteMessage(
            result=pb.TaskResult(
                task_id=offer.task_id,
                status=status,
                num_examples=num_examples,
                metrics_json=json.dumps(metrics or {}),
                error=error,
                duration_s=time.monotonic() - started,
            )
        )
    )
