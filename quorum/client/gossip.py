"""A gossip round at the site (DESIGN section 5): train, exchange models with the round's
neighbours end-to-end encrypted through the server's relay, mix, evaluate, report.

The site starts from its own model of the run (kept on disk by `GossipModels`), or from the
run's public initial model when it has none. While it trains it advertises a fresh X25519 key
signed with its identity and receives its neighbours' keys; it checks each signature against the
neighbour's registered identity key. It then seals its trained model once per neighbour it
sends to and uploads each ciphertext; the server answers with the ciphertexts addressed to this
site and the neighbours it will not hear from. Every model that arrives is authenticated (the
associated data binds run, round, attempt, sender and receiver), checked to be the run's model
(same tensors, finite), and mixed with the Metropolis-Hastings weights of the round, renormalised
over the neighbours that did arrive. A neighbour that is skipped (missing, bad key, tampered
ciphertext, wrong model) is reported with its reason; the round goes on without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quorum.client.gossip_models import GossipModels
from quorum.client.slots import Slots
from quorum.client.stages import training_awaited, unless_ended
from quorum.client.transfer import BlobCache, FederationStub, download, download_model, upload
from quorum.errors import BlobError, GossipError
from quorum.privacy import gossip_channel as channel
from quorum.proto import federation_pb2 as pb
from quorum.task import FitResult, JSONConfig, SiteTask
from quorum.wire import blobs

log = logging.getLogger("quorum.client")

STAGES = ("gossip-keys", "gossip-send", "gossip-mix")
"""The stages a gossip round goes through at the site, after "fit" (fault injection)."""


@dataclass(frozen=True)
class Link:
    """How the round talks to the server: the session stream for stage messages, the
    Download and Upload calls for models and ciphertexts."""

    stub: FederationStub
    session_id: str
    cache: BlobCache
    send: Callable[[pb.GossipReply], None]
    inbox: asyncio.Queue[pb.ServerMessage]

    async def fetch_initial(self, offer: pb.TaskOffer) -> bytes:
        return await download_model(self.stub, self.session_id, offer, self.cache)

    async def fetch_parcel(self, digest: str, size: int) -> bytes:
        # Ciphertexts are read once: never kept in the model cache.
        return await download(self.stub, self.session_id, digest, size, BlobCache(keep=0))

    async def upload_parcel(
        self, offer: pb.TaskOffer, receiver: int, data: bytes, started: float
    ) -> pb.UploadReceipt:
        return await upload(
            self.stub,
            pb.UploadHeader(
                session_id=self.session_id,
                task_id=offer.task_id,
                run_id=offer.run_id,
                round=offer.round,
                digest=blobs.digest(data),
                size=len(data),
                duration_s=time.monotonic() - started,
                gossip=pb.GossipAddress(receiver=receiver),
            ),
            blobs.Pieces(data),
        )


async def run(
    key: Ed25519PrivateKey,
    offer: pb.TaskOffer,
    config: JSONConfig,
    site_task: SiteTask,
    slots: Slots,
    models: GossipModels,
    link: Link,
    stage: Callable[[str], None],
    started: float,
) -> None:
    """Runs the round at this site and sends its report; raises GossipError when the server
    ends the round or breaks the protocol (the agent then reports the task failed). Training
    and evaluation take one of `slots`."""
    setup = offer.gossip
    training = asyncio.ensure_future(_train(offer, config, site_task, slots, models, link))
    async with training_awaited(training, log, offer.task_id):
        await _exchange(
            key, offer, setup, training, models, site_task, slots, config, link, stage, started
        )


async def _exchange(
    key: Ed25519PrivateKey,
    offer: pb.TaskOffer,
    setup: pb.GossipSetup,
    training: asyncio.Future[tuple[bytes, FitResult]],
    models: GossipModels,
    site_task: SiteTask,
    slots: Slots,
    config: JSONConfig,
    link: Link,
    stage: Callable[[str], None],
    started: float,
) -> None:
    run_id, round_no, attempt, me = offer.run_id, offer.round, setup.attempt, setup.index
    peers = {p.index: p for p in setup.peers}
    skipped: dict[int, str] = {}

    stage("gossip-keys")
    private, public = channel.generate_key()
    signature = channel.sign_key(key, run_id, round_no, attempt, me, public)
    link.send(
        pb.GossipReply(
            task_id=offer.task_id,
            key=pb.GossipKey(index=me, public_key=public, signature=signature),
        )
    )
    keys = (await _next(link.inbox, "keys", 2 * setup.stage_timeout_s)).keys.keys
    pair: dict[int, bytes] = {}
    for k in keys:
        peer = peers.get(k.index)
        if peer is None or k.index in pair:
            continue  # not a neighbour this round: nothing to agree with it
        try:
            channel.verify_key(
                peer.identity_key, run_id, round_no, attempt, k.index, k.public_key, k.signature
            )
            pair[k.index] = channel.pair_key(
                private, k.public_key, run_id, round_no, attempt, me, k.index
            )
        except GossipError as exc:
            skipped[k.index] = f"{exc.code}: {exc.message}"
    trained, fit = await unless_ended(
        training, link.inbox, _raise_unexpected, "the end of training"
    )

    stage("gossip-send")
    for index in sorted(pair):
        if not peers[index].send:
            continue
        associated = channel.associated_data(run_id, round_no, attempt, me, index)
        sealed = await asyncio.to_thread(channel.seal, pair[index], trained, associated)
        receipt = await link.upload_parcel(offer, index, sealed, started)
        if not receipt.accepted:
            log.warning(
                "event=gossip_parcel_refused round=%d receiver=%d code=%s message=%s",
                round_no,
                index,
                receipt.code,
                receipt.message,
            )
    inbox = (await _next(link.inbox, "inbox", offer.deadline_s)).inbox

    stage("gossip-mix")
    layout = blobs.read_layout(trained)
    mix = Mix(blobs.as_flat(trained, layout), setup.self_weight)
    received = mix.distances
    for parcel in inbox.parcels:
        j = parcel.sender
        peer = peers.get(j)
        if peer is None or peer.weight <= 0 or j in received or j in skipped:
            continue
        if j not in pair:
            skipped[j] = "no_key: this neighbour's round key never reached this site"
            continue
        try:
            sealed = await link.fetch_parcel(parcel.digest, parcel.size)
            associated = channel.associated_data(run_id, round_no, attempt, j, me)
            model = await asyncio.to_thread(channel.open_parcel, pair[j], sealed, associated)
            vector = _as_vector(model, layout)
            await asyncio.to_thread(mix.add, j, vector, peer.weight)
            del model, vector  # one neighbour's model held at a time
        except GossipError as exc:
            skipped[j] = f"{exc.code}: {exc.message}"
        except BlobError as exc:
            skipped[j] = f"relay_failed: {exc}"
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise  # the connection's trouble: the session's
            skipped[j] = f"relay_failed: the server no longer holds it ({exc.details()})"
    for missing in inbox.missing:
        if missing.index not in received:
            skipped.setdefault(missing.index, missing.reason)
    for j, peer in peers.items():
        if peer.weight > 0 and j not in received:
            skipped.setdefault(j, "no_parcel: the server named no model from this neighbour")
    mixed = await asyncio.to_thread(mix.result, trained, layout)
    del mix
    models.save(run_id, round_no, mixed)
    evaluation = await slots.run(site_task.evaluate, blobs.decode(mixed), config)
    metrics: dict[str, Any] = {
        **evaluation.metrics,
        **{f"fit_{k}": v for k, v in fit.metrics.items()},
        "fit_num_examples": fit.num_examples,
        "mixed_neighbours": len(received),
        "skipped_neighbours": sum(1 for j in skipped if peers.get(j, None) is not None),
    }
    link.send(
        pb.GossipReply(
            task_id=offer.task_id,
            report=pb.GossipReport(
                num_examples=evaluation.num_examples,
                metrics_json=json.dumps(metrics),
                distances=[
                    pb.GossipDistance(index=j, distance=d) for j, d in sorted(received.items())
                ],
                skipped=[
                    pb.GossipSkip(index=j, reason=reason[:500])
                    for j, reason in sorted(skipped.items())
                    if peers.get(j) is not None and peers[j].weight > 0
                ],
                duration_s=time.monotonic() - started,
            ),
        )
    )
    log.info(
        "event=gossip_round_done run_id=%s round=%d mixed=%d skipped=%d",
        run_id,
        round_no,
        len(received),
        len(skipped),
    )


async def _train(
    offer: pb.TaskOffer,
    config: JSONConfig,
    site_task: SiteTask,
    slots: Slots,
    models: GossipModels,
    link: Link,
) -> tuple[bytes, FitResult]:
    """Trains this site's model of the run (its last mixed one, else the initial model);
    returns the trained model as a blob of the initial model's layout."""
    initial = await link.fetch_initial(offer)
    layout = blobs.read_layout(initial)
    model = initial
    kept = models.latest_before(offer.run_id, offer.round)
    if kept is not None:
        made, data = kept
        if blobs.read_layout(data).tensors == layout.tensors:
            model = data
            log.info("event=gossip_resume run_id=%s from_round=%d", offer.run_id, made)
    fit = await slots.run(site_task.fit, blobs.decode(model), config)
    trained = await asyncio.to_thread(_encode_like, fit.params, layout)
    return trained, fit


def _encode_like(params: blobs.Params, layout: blobs.Layout) -> bytes:
    """The trained parameters as a blob of exactly `layout` (names, shapes, dtypes)."""
    if {n: np.shape(v) for n, v in params.items()} != {t.name: t.shape for t in layout.tensors}:
        raise GossipError("bad_model", "the trained parameters do not have the run's tensors")
    vector = np.concatenate(
        [np.asarray(params[t.name], np.float64).reshape(-1) for t in layout.tensors]
        or [np.zeros(0, np.float64)]
    )
    data = blobs.encode(blobs.from_flat(vector, layout))
    if blobs.read_layout(data) != layout:
        raise GossipError("bad_model", "the trained model does not encode to the run's layout")
    return data


def _as_vector(model: bytes, layout: blobs.Layout) -> np.ndarray:
    """A neighbour's decrypted model as one vector (`blobs.as_flat`: a view of its bytes for a
    model of one float dtype), once it is known to be the run's model."""
    try:
        theirs = blobs.read_layout(model)
    except BlobError as exc:
        raise GossipError(
            "bad_model", f"the neighbour's model is not a valid blob: {exc}"
        ) from None
    if theirs.tensors != layout.tensors:
        raise GossipError("bad_model", "the neighbour's model does not have the run's tensors")
    if not blobs.all_finite(model, theirs):
        raise GossipError("bad_model", "the neighbour's model holds NaN or infinite values")
    return blobs.as_flat(model, theirs)


MIX_BLOCK = 1 << 20
"""Values mixed at a time: the float64 work of a block, not of the model."""


class Mix:
    """This site's row of the round's mixing, renormalised over the models that arrive: a
    float64 sum the models are added to one at a time, each block by block, so that the site
    holds its own model, the sum and one neighbour's model (a float32 model: 4x it, where each
    neighbour's model in float64 beside its own and the sum's terms was 10x with two)."""

    def __init__(self, mine: np.ndarray, self_weight: float) -> None:
        self.mine = mine
        self.total = self_weight
        self.sum = np.multiply(mine, self_weight, dtype=np.float64)
        self.distances: dict[int, float] = {}
        """Each mixed neighbour's L2 distance from this site's own model (its report's)."""

    def add(self, j: int, vector: np.ndarray, weight: float) -> None:
        squares = 0.0
        for start in range(0, vector.shape[0], MIX_BLOCK):
            block = slice(start, start + MIX_BLOCK)
            theirs = vector[block].astype(np.float64)
            apart = theirs - self.mine[block]
            squares += float(np.dot(apart, apart))
            del apart
            theirs *= weight
            self.sum[block] += theirs
        self.distances[j] = squares**0.5
        self.total += weight

    def result(self, trained: bytes, layout: blobs.Layout) -> bytes:
        """The mixed model; the trained one where no weight is left (nothing to mix)."""
        if self.total <= 0:
            return trained
        self.sum /= self.total
        return blobs.encode(blobs.from_flat(self.sum, layout))


def _raise_unexpected(message: pb.ServerMessage, want: str) -> NoReturn:
    if message.WhichOneof("kind") == "notice":
        raise GossipError(
            "round_ended",
            f"the server ended this site's part: {message.notice.code}: {message.notice.message}",
        )
    raise GossipError(
        "wrong_stage", f"expected {want}, got the {message.gossip.WhichOneof('stage')!r} stage"
    )


async def _next(
    inbox: asyncio.Queue[pb.ServerMessage], want: str, timeout: float
) -> pb.GossipStage:
    """The server's next stage message; a notice for this task ends the site's part."""
    try:
        message = await asyncio.wait_for(inbox.get(), timeout)
    except TimeoutError:
        raise GossipError(
            "stage_timeout", f"no {want!r} stage message from the server in {timeout:.0f} s"
        ) from None
    if message.WhichOneof("kind") != "gossip" or message.gossip.WhichOneof("stage") != want:
        _raise_unexpected(message, f"the {want!r} stage")
    stage_message: pb.GossipStage = message.gossip
    return stage_message
