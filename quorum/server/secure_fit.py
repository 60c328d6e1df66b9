"""A fit phase under secure aggregation (SecAgg+, DESIGN section 6).

The driver opens the phase with a SecAgg setup in every offer, then walks the four stages:
advertise keys, share keys, masked input, unmask. A stage ends when every site still in the
protocol has answered, or its deadline passes; a site that disconnects, reports a failure or
breaks the protocol is out from then on (a dropout), and the round goes on while at least the
threshold of sites is left. The pure `ServerRound` checks every message and keeps only the
running masked sum, so no site's update is ever held in the clear here. What happened (stages,
timings, who dropped where, whether the sum was recovered) is the round's `secagg` record.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from quorum.config import RunConfig
from quorum.errors import SecAggError, UploadRejected
from quorum.fitconfig import FitConfig
from quorum.privacy.dp.central import DP_CLIPPING_METRIC, DP_NOISE_METRIC
from quorum.privacy.secagg import (
    MASKED_TENSOR,
    DecodedSum,
    RoundContext,
    ServerRound,
    max_sites,
    neighbours,
)
from quorum.proto import federation_pb2 as pb
from quorum.server import validation
from quorum.server.phases import (
    Accepted,
    PendingTask,
    Phase,
    PhaseHandler,
    RoundAborted,
    folding,
    model_header,
)
from quorum.server.services import RoundServices
from quorum.server.sessions import Session
from quorum.threads import to_the_end
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile
from quorum.wire.secagg import (
    keys_from_pb,
    keys_to_pb,
    revealed_from_pb,
    shares_from_pb,
    shares_to_pb,
)

T = TypeVar("T")

STAGES = ("advertise-keys", "share-keys", "masked-input", "unmask")
_MESSAGE_OF_STAGE = {"advertise-keys": "keys", "share-keys": "shares", "unmask": "unmask"}


MASK_BLOCK = 1 << 18
"""Values of a masked upload read from its spool at a time (1 MiB)."""


class SpooledMask:
    """A checked masked upload's vector (`MaskedBlocks`), read from its spool a block at a
    time: the round's sum is its only vector of the model's size."""

    def __init__(self, file: BlobFile) -> None:
        (tensor,) = file.layout.tensors  # checked against `masked_layout`
        self.length = tensor.numel
        self._file = file
        self._offset = file.layout.data_offset + tensor.start

    def blocks(self) -> Iterator[tuple[int, npt.NDArray[np.uint32]]]:
        for start in range(0, self.length, MASK_BLOCK):
            count = min(MASK_BLOCK, self.length - start)
            data = self._file.read(self._offset + 4 * start, 4 * count)
            if len(data) != 4 * count:
                raise OSError(f"the spool ended at value {start + len(data) // 4}")
            yield start, np.frombuffer(data, "<u4")


@functools.lru_cache(maxsize=4)
def masked_layout(length: int) -> blobs.Layout:
    """The layout of a masked upload: one uint32 vector of `length` elements."""
    return blobs.one_tensor_layout(MASKED_TENSOR, "U32", (length,))[1]


def threshold_for(setting: int | float, neighbourhood: int) -> int:
    """Shares needed per secret: an integer as given, or a fraction of the neighbourhood (the
    site and its neighbours), never below 2 (one share would let the server unmask a site)."""
    if isinstance(setting, float):
        return max(2, math.ceil(setting * neighbourhood))
    return setting


class SecureFit(PhaseHandler):
    """The handler of a secure-aggregation fit phase: it walks the stages."""

    def __init__(
        self,
        services: RoundServices,
        phase: Phase,
        cohort: list[Session],
        config: RunConfig,
        rng: random.Random,
        numel: int,
        dp_noise: tuple[float, float] | None = None,
        sum_vector: npt.NDArray[np.uint32] | None = None,
    ) -> None:
        """`dp_noise` = (clipping norm, noise standard deviation per site) of distributed DP:
        every site clips its update and adds its share of the noise, and counts once.
        `sum_vector`: where the masked sum is made (`ServerRound`), numel + 1 values."""
        self.sum_vector = sum_vector
        settings = config.secagg
        self.services = services
        self.phase = phase
        self.settings = settings
        self.cohort = cohort
        self.names = [s.site for s in cohort]
        self.identity_keys = [services.store.site(name).public_key for name in self.names]
        n = len(cohort)
        self.graph = neighbours(n, settings.neighbours, rng)
        smallest = min(len(g) for g in self.graph) + 1
        self.threshold = threshold_for(settings.threshold, smallest)
        self.vector_length = numel + 1
        self.dp_noise = dp_noise or (0.0, 0.0)
        self.summed: int | None = None
        """How many masked vectors the unmasked sum holds, once the server has it."""
        self.max_weight = 1 if dp_noise else settings.max_weight
        # The masked-input stage covers local training: it has the run's round deadline.
        self.masked_timeout_s = config.round_timeout_s
        self.min_sum = config.min_fit_sites
        self.report: dict[str, Any] = {
            "cohort": n,
            "threshold": self.threshold,
            "neighbourhood": smallest,
            "stages": [],
            "recovered": False,
            "survivors": None,
            "reason": None,
        }
        self.context = RoundContext(phase.run_id, phase.round, phase.attempt, phase.model_digest)
        self.server: ServerRound | None = None
        self.stage = "setup"
        self.index: dict[str, int] = {}
        self.answered: dict[str, set[int]] = {stage: set() for stage in STAGES}
        self.dropped: dict[int, str] = {}
        self.by_session = {s.id: i for i, s in enumerate(cohort)}
        phase.handler = self

    # ---- the stages (the driver's side) ----

    async def run(self, config: FitConfig, task_ref: str) -> tuple[DecodedSum, int, int]:
        """Runs the phase; returns (the example-weighted mean delta, read a block at a time
        from the unmasked sum, the summed weight, the number of sites summed). Raises
        RoundAborted when the sum cannot be recovered."""
        try:
            self.server = self._check_cohort()
            self.services.book.open_phase(
                self.phase,
                self.cohort,
                config,
                task_ref,
                self.masked_timeout_s + 3 * self.settings.stage_timeout_s,
            )
            self.index = {t.id: self.by_session[t.session_id] for t in self.phase.tasks.values()}
            try:
                total, count = await self._stages(self.server)
            except RoundAborted as exc:
                for i in range(len(self.cohort)):
                    if i not in self.dropped:
                        self._send_notice(i, "round_aborted", str(exc))
                raise
            finally:
                self.stage = "done"
                self.phase.closed = True
                self.services.book.close_phase(self.phase)
                # The phase is remembered with its tasks (to refuse late answers): it lets go of
                # the round's sum and ciphertexts, and of the vector the sum was made in (the
                # driver keeps its own reference where it reuses it).
                self.server = None
                self.sum_vector = None
            settings = self.settings
            # A site can put any weight in its masked vector: a total outside the range the
            # sites' weights allow is refused (SecAgg hides each site's values, so no more
            # than that can be checked).
            mean = self._close(
                lambda: DecodedSum(
                    total,
                    count,
                    settings.clip_range,
                    settings.quantization_bits,
                    self.max_weight,
                )
            )
            self.report["recovered"] = True
            self.report["survivors"] = count
        finally:
            self.services.store.set_round_secagg(
                self.phase.run_id, self.phase.round, self.phase.attempt, self.report
            )
        return mean, mean.weight, count

    def _check_cohort(self) -> ServerRound:
        n = len(self.cohort)
        smallest = self.report["neighbourhood"]
        if n < 2 or self.threshold > smallest:
            raise self._abort(
                f"a cohort of {n} site(s) with neighbourhoods of {smallest} cannot meet the "
                f"threshold of {self.threshold} shares"
            )
        if 2 * self.threshold <= smallest:
            # With half the shares or fewer, two disjoint groups of sites could each hand the
            # server one kind of secret of the same site: its update would be unmasked.
            raise self._abort(
                f"the threshold of {self.threshold} shares is not a majority of neighbourhoods "
                f"of {smallest}; raise run.secagg.threshold"
            )
        bits = self.settings.quantization_bits
        if n > max_sites(bits):
            raise self._abort(
                f"{n} sites could overflow the 32-bit sum at {bits} quantization bits; lower "
                "run.secagg.quantization_bits or the cohort size"
            )
        if n * self.max_weight >= 2**32:
            raise self._abort(
                f"{n} sites' weights of up to {self.max_weight} could overflow the "
                "32-bit sum; lower run.secagg.max_weight or the cohort size"
            )
        return ServerRound(
            self.context,
            self.graph,
            self.threshold,
            self.vector_length,
            identity_keys=self.identity_keys,
            sum_vector=self.sum_vector,
        )

    async def _stages(self, server: ServerRound) -> tuple[np.ndarray, int]:
        """The four stages; returns the unmasked sum and the number of vectors in it."""
        timeout = self.settings.stage_timeout_s
        await self._stage("advertise-keys", set(range(len(self.cohort))), timeout)
        for i, keys in self._close(server.close_advertise).items():
            self._send(i, pb.SecAggStage(keys=pb.SecAggKeyList(keys=[keys_to_pb(k) for k in keys])))
        await self._stage("share-keys", set(server.advertised), timeout)
        for i, shares in self._close(server.close_shares).items():
            self._send(i, pb.SecAggStage(shares=shares_to_pb(shares)))
        await self._stage("masked-input", set(server.shared), self.masked_timeout_s)
        request = self._close(server.close_masked)
        if len(request.survivors) < self.min_sum:
            # Decided before any share is revealed: a sum that would be thrown away is never
            # computed.
            raise self._abort(
                f"{len(request.survivors)} masked vectors arrived; min_fit_sites is {self.min_sum}"
            )
        unmask = pb.SecAggUnmaskRequest(
            survivors=sorted(request.survivors), dropped=sorted(request.dropped)
        )
        for i in request.survivors:
            self._send(i, pb.SecAggStage(unmask=unmask))
        await self._stage("unmask", set(request.survivors), timeout)
        total = await asyncio.to_thread(self._close, server.finish)
        self.summed = len(request.survivors)
        return total, self.summed

    async def _stage(self, name: str, expected: set[int], timeout: float) -> None:
        self.stage = name
        started, t0 = time.time(), time.monotonic()
        deadline = t0 + timeout
        answered = self.answered[name]
        await self.phase.wait_until(
            lambda: all(i in answered or i in self.dropped for i in expected), deadline
        )
        async with self.phase.fold_lock:
            # Closed under the fold lock: a masked vector being folded now is in, later ones
            # are refused.
            self.stage = f"{name}:closed"
        missing = sorted(expected - answered)
        for i in missing:
            self.dropped.setdefault(i, f"no answer before the {name} deadline")
        self.report["stages"].append(
            {
                "stage": name,
                "started_at": started,
                "duration_s": time.monotonic() - t0,
                "expected": len(expected),
                "answered": len(expected & answered),
                "dropped": [{"site": self.names[i], "reason": self.dropped[i]} for i in missing],
            }
        )

    def _close(self, close: Callable[[], T]) -> T:
        """Runs a ServerRound step; a sum that cannot be recovered aborts the round."""
        try:
            return close()
        except SecAggError as exc:
            raise self._abort(str(exc)) from None

    def _abort(self, reason: str) -> RoundAborted:
        self.report["reason"] = f"secure aggregation: {reason}"
        return RoundAborted(self.report["reason"])

    def _setup(self, index: int) -> pb.SecAggSetup:
        settings = self.settings
        return pb.SecAggSetup(
            index=index,
            threshold=self.threshold,
            vector_length=self.vector_length,
            peers=[
                pb.SecAggPeer(
                    index=j,
                    name=self.names[j],
                    identity_key=self.identity_keys[j],
                )
                for j in sorted(self.graph[index])
            ],
            clip_range=settings.clip_range,
            quantization_bits=settings.quantization_bits,
            max_weight=self.max_weight,
            attempt=self.phase.attempt,
            stage_timeout_s=settings.stage_timeout_s,
            dp_clipping_norm=self.dp_noise[0],
            dp_noise_stddev=self.dp_noise[1],
        )

    def _task_id(self, index: int) -> str:
        return next(t for t, i in self.index.items() if i == index)

    def _send(self, index: int, stage: pb.SecAggStage) -> None:
        if index in self.dropped:
            return
        stage.task_id = self._task_id(index)
        self.cohort[index].send(pb.ServerMessage(secagg=stage))

    def _send_notice(self, index: int, code: str, message: str) -> None:
        self.cohort[index].send(
            pb.ServerMessage(
                notice=pb.Notice(task_id=self._task_id(index), code=code, message=message)
            )
        )

    # ---- the phase's handler (called by the task book) ----

    def offer(self, offer: pb.TaskOffer, session: Session) -> None:
        offer.secagg.CopyFrom(self._setup(self.by_session[session.id]))

    def on_secagg(self, task: PendingTask, reply: pb.SecAggReply) -> None:
        """A site's keys, shares or unmask shares; raises UploadRejected."""
        index = self.index[task.id]
        kind = reply.WhichOneof("stage")
        if index in self.dropped:  # it reported a failure, or broke the protocol: out for good
            raise UploadRejected(
                "dropped_out", f"this site left the round: {self.dropped[index][:200]}"
            )
        if self.server is None or kind is None or kind != _MESSAGE_OF_STAGE.get(self.stage):
            raise UploadRejected(
                "wrong_stage", f"a {kind!r} message arrived during the {self.stage} stage"
            )
        try:
            if kind == "keys":
                self.server.receive_keys(index, keys_from_pb(reply.keys))
            elif kind == "shares":
                self.server.receive_shares(index, shares_from_pb(reply.shares))
            else:
                self.server.receive_unmask(index, revealed_from_pb(reply.unmask))
        except SecAggError as exc:
            raise UploadRejected("secagg_protocol", str(exc)) from None
        self.answered[self.stage].add(index)
        self.phase.changed.set()

    def admit(self, task: PendingTask, header: pb.UploadHeader) -> bool:
        """A masked vector's header: its weight is masked, so not read here."""
        metrics = model_header(task, header)
        index = self.index[task.id]
        if (
            self.dp_noise != (0.0, 0.0)
            and (
                metrics.get(DP_CLIPPING_METRIC),
                metrics.get(DP_NOISE_METRIC),
            )
            != self.dp_noise
        ):
            # A site that did not apply this round's clipping and noise (an agent from before
            # distributed DP ignores the setup's fields) would leave the sum under-noised.
            raise UploadRejected(
                "dp_not_applied",
                f"distributed DP needs the update clipped to {self.dp_noise[0]:g} with noise "
                f"{self.dp_noise[1]:g} added; the site reported "
                f"{metrics.get(DP_CLIPPING_METRIC)!r} and {metrics.get(DP_NOISE_METRIC)!r}",
            )
        if self.stage != "masked-input" or self.server is None:
            raise UploadRejected(
                "wrong_stage", f"a masked vector arrived during the {self.stage} stage"
            )
        if index not in self.server.shared:
            raise UploadRejected(
                "not_in_stage", "this site's key shares were not relayed; it cannot add a vector"
            )
        validation.check_declared_size(header.size, self.phase.layout.size)
        return True

    async def accept(
        self,
        task: PendingTask,
        header: pb.UploadHeader,
        upload: validation.Received,
        accepted: Accepted,
    ) -> None:
        # To the end, cancelled or not: the spool is written over by the next upload next.
        file = await to_the_end(validation.check_blob, upload, header.digest, self.phase.layout)
        async with folding(task):
            await self.add_masked(task, SpooledMask(file))
        accepted(0)  # the weight is in the masked sum

    async def add_masked(self, task: PendingTask, vector: SpooledMask) -> None:
        """Folds a validated masked vector into the sum, read from its spool a block at a
        time; the caller holds the phase's fold lock."""
        if self.stage != "masked-input":
            raise UploadRejected("task_closed", "the masked-input stage closed at its deadline")
        index = self.index[task.id]
        server = self.server
        assert server is not None  # set for as long as the stage is open
        try:
            await to_the_end(lambda: server.add_masked(index, vector))
        except SecAggError as exc:
            raise UploadRejected("secagg_protocol", str(exc)) from None
        self.answered["masked-input"].add(index)

    def drop(self, task: PendingTask, reason: str) -> None:
        """The site is out of the protocol from now on (gone, failed, or broke it)."""
        index = self.index.get(task.id)
        if index is not None and index not in self.dropped:
            self.dropped[index] = reason
            self.phase.changed.set()
