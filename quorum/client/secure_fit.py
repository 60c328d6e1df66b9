"""A fit task under secure aggregation, at the site (SecAgg+, DESIGN section 6).

The site trains while it takes part in the key stages, then uploads its update clipped,
quantised, weighted and masked, and finally reveals the shares the server needs to remove the
masks of the round's survivors and dropouts. Any breach of the protocol (a neighbour's key that
its identity did not sign, a share that fails authentication, a server asking for both secrets
of one site) raises SecAggError: the site leaves the round and reports why.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quorum.client.stages import unless_ended
from quorum.errors import SecAggError
from quorum.privacy.dp.central import DP_CLIPPING_METRIC, DP_NOISE_METRIC, clip_in_place
from quorum.privacy.secagg import (
    MASKED_TENSOR,
    ClientRound,
    Peer,
    RoundContext,
    Setup,
    UnmaskRequest,
    add_encoded_update,
)
from quorum.privacy.secagg.quantize import QUANTIZE_BLOCK
from quorum.proto import federation_pb2 as pb
from quorum.task import FitResult
from quorum.wire import blobs
from quorum.wire.secagg import (
    keys_from_pb,
    keys_to_pb,
    revealed_to_pb,
    shares_from_pb,
    shares_to_pb,
)

Upload = Callable[[blobs.Buffer, dict[str, float]], Awaitable[pb.UploadReceipt]]
"""Sends a masked blob with the site's metrics; returns the server's receipt."""


async def run(
    key: Ed25519PrivateKey,
    offer: pb.TaskOffer,
    send: Callable[[pb.SecAggReply], None],
    inbox: asyncio.Queue[pb.ServerMessage],
    training: asyncio.Future[tuple[bytes, FitResult]],
    upload: Upload,
    stage: Callable[[str], None],
) -> None:
    """Runs the four stages; `training` (download + local fit) runs meanwhile. `stage` is
    called as each stage begins at this site (fault injection hooks in there)."""
    setup = offer.secagg
    machine = ClientRound(
        key,
        Setup(
            context=RoundContext(offer.run_id, offer.round, setup.attempt, offer.model_digest),
            index=setup.index,
            threshold=setup.threshold,
            vector_length=setup.vector_length,
            peers=tuple(Peer(p.index, p.name, p.identity_key) for p in setup.peers),
        ),
    )
    # The key and share stages close within stage_timeout_s of opening; the unmask request
    # waits for the masked-input stage, which lasts as long as the slowest site's training.
    quick = 2 * setup.stage_timeout_s

    stage("advertise-keys")
    mine = machine.advertise()
    send(pb.SecAggReply(task_id=offer.task_id, keys=keys_to_pb(mine)))
    keys = (await _next(inbox, "keys", quick)).keys.keys

    stage("share-keys")
    shares = machine.share_keys([keys_from_pb(k) for k in keys])
    send(pb.SecAggReply(task_id=offer.task_id, shares=shares_to_pb(shares)))
    routed = shares_from_pb((await _next(inbox, "shares", quick)).shares)
    await asyncio.to_thread(machine.receive_shares, routed)
    model, fit = await unless_ended(training, inbox, _raise_unexpected, "the masked-input stage")

    stage("masked-input")
    blob, metrics = await asyncio.to_thread(_masked_blob, machine, model, fit, setup)
    receipt = await upload(blob, metrics)
    if not receipt.accepted:
        raise SecAggError(f"the masked vector was refused: {receipt.code}: {receipt.message}")
    request = (await _next(inbox, "unmask", offer.deadline_s)).unmask

    stage("unmask")
    revealed = machine.unmask(
        UnmaskRequest(frozenset(request.survivors), frozenset(request.dropped))
    )
    send(pb.SecAggReply(task_id=offer.task_id, unmask=revealed_to_pb(revealed)))


def _masked_blob(
    machine: ClientRound, model: bytes, fit: FitResult, setup: pb.SecAggSetup
) -> tuple[blobs.Buffer, dict[str, float]]:
    """The upload: the masked uint32 vector of (trained - global), clipped and quantised after
    scaling by the site's weight share, with the weight as the last element; and the metrics
    it carries. Made in the upload's own bytes: the encoded update is added in a block at a
    time while each trained tensor is let go once read (their float copies, `fit.params`, are
    emptied), then the mask is expanded into it. Its pages are touched as they are written, so
    the site holds its global model, its trained one and about one tensor more: no delta, no
    quantised vector and no mask beside the upload (the mask is expanded after training
    rather than during it, a pass of AES per neighbour)."""
    layout = blobs.read_layout(model)
    if {n: np.shape(v) for n, v in fit.params.items()} != {t.name: t.shape for t in layout.tensors}:
        raise SecAggError("the trained parameters do not have the global model's tensors")
    # In the model's own dtype when it has one (a difference of nearby floats is exact).
    dtypes = [np.asarray(v).dtype for v in fit.params.values()]
    dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
    reference = blobs.as_flat(model, layout)
    names = [t.name for t in layout.tensors]
    parts = _delta_parts(fit.params, names, reference, dtype)
    dp: dict[str, float] = {}
    if setup.dp_clipping_norm or setup.dp_noise_stddev:
        # Clipping to an L2 norm needs the whole delta: distributed DP holds it once.
        delta = np.concatenate(list(parts)) if names else np.zeros(0)
        add_distributed_noise(delta, setup.dp_clipping_norm, setup.dp_noise_stddev)
        parts = iter([delta])
        # The server refuses a masked vector whose site does not say it applied them.
        dp = {DP_CLIPPING_METRIC: setup.dp_clipping_norm, DP_NOISE_METRIC: setup.dp_noise_stddev}
    blob, vector = blobs.blank(MASKED_TENSOR, "U32", (setup.vector_length,))
    _, clipped = add_encoded_update(
        vector,
        parts,
        fit.num_examples,
        setup.clip_range,
        setup.quantization_bits,
        setup.max_weight,
    )
    machine.mask_in_place(vector)
    return blob, {**fit.metrics, **dp, "secagg_clipped_fraction": clipped / max(reference.size, 1)}


def _delta_parts(
    params: dict[str, np.ndarray], names: list[str], reference: np.ndarray, dtype: np.dtype
) -> Iterator[np.ndarray]:
    """trained - reference in `dtype`, one block of one tensor at a time, in the blob's order;
    each trained tensor is taken out of `params` as it is read, so it is freed once read."""
    start = 0
    for name in names:
        values = np.asarray(params.pop(name)).reshape(-1)
        for offset in range(0, values.shape[0], QUANTIZE_BLOCK):
            part = values[offset : offset + QUANTIZE_BLOCK].astype(dtype)
            part -= reference[start : start + part.shape[0]]
            start += part.shape[0]
            yield part


def add_distributed_noise(
    delta: np.ndarray, clipping_norm: float, stddev: float, rng: np.random.Generator | None = None
) -> None:
    """This site's part of distributed DP, in place: its update clipped to `clipping_norm` in
    L2, plus its share of the cohort's Gaussian noise."""
    if not (math.isfinite(clipping_norm) and clipping_norm > 0):
        raise SecAggError(f"the DP clipping norm must be positive, got {clipping_norm}")
    if not (math.isfinite(stddev) and stddev >= 0):
        raise SecAggError(f"the DP noise standard deviation must be >= 0, got {stddev}")
    clip_in_place(delta, clipping_norm)
    delta += (rng or np.random.default_rng()).normal(0.0, stddev, delta.shape[0])


def _raise_unexpected(message: pb.ServerMessage, want: str) -> NoReturn:
    if message.WhichOneof("kind") == "notice":
        raise SecAggError(
            f"the server ended this site's part: {message.notice.code}: {message.notice.message}"
        )
    raise SecAggError(f"expected {want}, got the {message.secagg.WhichOneof('stage')!r} stage")


async def _next(
    inbox: asyncio.Queue[pb.ServerMessage], want: str, timeout: float
) -> pb.SecAggStage:
    """The server's next stage message; a notice for this task ends the site's part."""
    try:
        message = await asyncio.wait_for(inbox.get(), timeout)
    except TimeoutError:
        raise SecAggError(f"no {want!r} stage message from the server in {timeout:.0f} s") from None
    if message.WhichOneof("kind") != "secagg" or message.secagg.WhichOneof("stage") != want:
        _raise_unexpected(message, f"the {want!r} stage")
    stage_message: pb.SecAggStage = message.secagg
    return stage_message
