"""The tasks of one phase of a round (fit or evaluate), what came back for them, and the
handler that decides what each answer is worth.

A phase is opened with its tasks, takes answers until every task is answered or its deadline
passes, then closes: later answers are refused as `task_closed`. Its `handler` is one kind of
phase (`PhaseHandler`): a plain fit or evaluate phase (`PlainPhase`), a secure-aggregation fit
(`secure_fit.SecureFit`) or a gossip round's relay (`gossip_relay.GossipRound`). The task book
checks every answer against its task and records what the handler made of it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from quorum.aggregation import Update, UpdateSum
from quorum.errors import QuorumError, UploadRejected
from quorum.proto import federation_pb2 as pb
from quorum.server import validation
from quorum.server.sessions import Session
from quorum.threads import to_the_end
from quorum.wire.blobs import Layout
from quorum.wire.codecs import Codec

Kind = Literal["fit", "evaluate"]

Accepted = Callable[[int], None]
"""Records an upload as its task's answer, with the examples it counts for."""


class PhaseHandler(abc.ABC):
    """What one kind of phase does with what its sites send. The task book checks every answer
    against its task first (offered to this session, in its run and round, the phase still
    open, not answered yet), hands it to the task's phase's handler and records the outcome;
    it never asks which kind of phase it is. These defaults refuse what a phase does not take
    and are what a phase that takes it can build on."""

    def offer(self, offer: pb.TaskOffer, session: Session) -> None:  # noqa: B027 (a hook)
        """Adds to a task's offer what this session needs beyond the model and config (its
        SecAgg setup, its gossip neighbours)."""

    @abc.abstractmethod
    def admit(self, task: PendingTask, header: pb.UploadHeader) -> bool:
        """Checks an upload's header before any of its bytes are read; returns whether it is the
        task's one answer (the task is then receiving it), not one of several. Raises
        UploadRejected."""

    @abc.abstractmethod
    async def accept(
        self,
        task: PendingTask,
        header: pb.UploadHeader,
        upload: validation.Received,
        accepted: Accepted,
    ) -> None:
        """Takes an admitted upload's bytes (from a session still open, as many as its header
        said), calling `accepted` once they are the task's answer. Raises UploadRejected."""

    def result(self, task: PendingTask, result: pb.TaskResult) -> SiteResult:
        """A site's answer `ok` to its task: what it counts for. Raises UploadRejected."""
        raise UploadRejected("wrong_kind", f"task {task.id!r} is a fit task; upload the update")

    def on_secagg(self, task: PendingTask, reply: pb.SecAggReply) -> None:
        """A secure-aggregation stage message; raises UploadRejected."""
        raise UploadRejected("unknown_task", f"no secure-aggregation task {task.id!r} is open")

    def on_gossip(self, task: PendingTask, reply: pb.GossipReply) -> None:
        """A gossip stage message; raises UploadRejected."""
        raise UploadRejected("unknown_task", f"no gossip task {task.id!r} is open")

    def drop(self, task: PendingTask, reason: str) -> None:  # noqa: B027 (a hook)
        """The site is out of its task from now on: it was refused, reported a failure or
        disconnected."""

    def ends_on_refusal(self, code: str) -> bool:
        """Whether a refused answer (of this code) ends the site's task: it does for a phase
        whose tasks answer once."""
        return True

    def serves(self, task: PendingTask, digest: str, relayed: bool) -> bool:
        """Whether a download of `digest` (`relayed`: held by the relay for the site) was for
        this task."""
        return task.phase.model_digest == digest

    def parcel_for(self, session: Session, digest: str) -> bytes | None:
        """What the phase holds for download by this session under `digest`, if anything."""
        return None


class PlainPhase(PhaseHandler):
    """A fit phase that folds each site's update into the round's sum (`Phase.accumulator`) as
    it arrives, or an evaluate phase that takes the sites' results."""

    def admit(self, task: PendingTask, header: pb.UploadHeader) -> bool:
        model_header(task, header)
        validation.check_num_examples(header.num_examples, task.phase.max_num_examples)
        validation.check_declared_size(header.size, task.phase.layout.size)
        return True

    async def accept(
        self,
        task: PendingTask,
        header: pb.UploadHeader,
        upload: validation.Received,
        accepted: Accepted,
    ) -> None:
        phase = task.phase
        update: Update
        # The checks read the upload's spool: to the end, for the spool goes back to be
        # written over by the next upload as soon as this returns, cancelled or not.
        if phase.codec is not None:
            if phase.reference is None:  # closed while the upload came in
                raise task_closed(task.id)
            update = await to_the_end(
                validation.check_encoded,
                upload,
                header.digest,
                phase.codec,
                phase.reference,
                phase.layout,
            )
        else:
            update = await to_the_end(validation.check_blob, upload, header.digest, phase.layout)
        num_examples = int(header.num_examples)
        async with folding(task):
            assert phase.accumulator is not None
            accumulator = phase.accumulator
            folded = False

            def fold() -> None:
                nonlocal folded
                accumulator.fold(update, float(num_examples))
                folded = True

            try:
                await to_the_end(fold)
            except asyncio.CancelledError:
                if folded:  # the site hung up, yet its update is in the sum: record it so
                    accepted(num_examples)
                raise
            except UploadRejected:  # refused before any of it was folded (a stale update)
                raise
            except Exception as exc:
                # Part of the update may be in the sum, which a float sum cannot take back.
                phase.broken = f"the update of site {task.site} could not be folded whole: {exc}"
                raise UploadRejected("fold_failed", phase.broken) from None
        accepted(num_examples)

    def result(self, task: PendingTask, result: pb.TaskResult) -> SiteResult:
        if task.phase.kind != "evaluate":
            return super().result(task, result)
        # A site may have nothing to evaluate (no held-out examples): 0, and no metrics.
        validation.check_num_examples(result.num_examples, task.phase.max_num_examples, minimum=0)
        metrics = validation.parse_metrics(result.metrics_json)
        if result.num_examples == 0 and metrics:
            raise UploadRejected(
                "metrics_without_examples", "metrics reported for 0 examples evaluated"
            )
        return SiteResult(task.site, int(result.num_examples), metrics)


def model_header(task: PendingTask, header: pb.UploadHeader) -> dict[str, float]:
    """What an upload of a model (plain, or masked under SecAgg) must be first: not a gossip
    parcel, for a fit task, with metrics; returns them."""
    if header.HasField("gossip"):
        raise UploadRejected("not_gossip", f"task {task.id!r} is not a gossip round's")
    if task.phase.kind != "fit":
        raise UploadRejected("wrong_kind", f"task {task.id!r} is an evaluate task; send a result")
    return validation.parse_metrics(header.metrics_json)


@contextlib.asynccontextmanager
async def folding(task: PendingTask) -> AsyncIterator[None]:
    """The phase's fold lock, held while a validated upload goes into the round; refused once
    the phase is closed (its deadline passed while the upload was checked)."""
    async with task.phase.fold_lock:
        if task.phase.closed:
            raise task_closed(task.id)
        if task.phase.broken is not None:
            raise UploadRejected("round_broken", f"the round's sum is lost: {task.phase.broken}")
        yield


def task_closed(task_id: str) -> UploadRejected:
    return UploadRejected(
        "task_closed", f"task {task_id!r} closed (its deadline passed or its run ended)"
    )


class RoundAborted(QuorumError):
    """A round that cannot produce a new model; the driver records it and tries again."""


class RunFailed(RoundAborted):
    """A round that no retry can mend (every site failed with the same error): recorded as
    aborted, and the run fails at once with its reason."""


@dataclass(eq=False)
class PendingTask:
    id: str
    site: str
    session_id: str
    phase: Phase
    state: Literal["offered", "receiving", "done", "expired"] = "offered"
    offered_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class SiteResult:
    site: str
    num_examples: int
    metrics: dict[str, float]


@dataclass(eq=False)
class Phase:
    kind: Kind
    run_id: str
    round: int
    attempt: int
    model_digest: str
    model_blake3: str
    """What sites check their download of the model against (`quorum.wire.digests`)."""
    model_size: int
    layout: Layout
    max_num_examples: int
    accumulator: UpdateSum | None = None
    codec: Codec | None = None
    """How a fit phase's uploads are encoded (the run's compression); None: plain models."""
    reference: np.ndarray | None = None
    """The flat model a compressed fit phase serves: its uploads are deltas from it."""
    handler: PhaseHandler = field(default_factory=PlainPhase)
    """The kind of phase, which decides what its answers are worth; a SecAgg fit phase's
    `SecureFit` or a gossip round's relay sets itself here."""
    tasks: dict[str, PendingTask] = field(default_factory=dict)
    results: list[SiteResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """The errors of the tasks whose sites reported that they failed."""
    closed: bool = False
    broken: str | None = None
    """Why the phase's sum can no longer be used: a fold stopped partway (the upload's spool
    could not be read whole) left part of an update in it. Its round is aborted."""
    fold_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _answered: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever one of its tasks is answered or loses its site; multi-stage phases wait
    on it."""

    def finish(self, task: PendingTask) -> None:
        task.state = "done"
        self.changed.set()
        if all(t.state == "done" for t in self.tasks.values()):
            self._answered.set()

    async def wait(self, timeout: float) -> None:
        """Until every task is answered or the deadline passes, then closes the phase."""
        if self.tasks:
            try:
                await asyncio.wait_for(self._answered.wait(), timeout)
            except TimeoutError:
                pass
        self.closed = True
        # An upload admitted before the deadline finishes folding before the step reads the sum.
        async with self.fold_lock:
            pass

    async def wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Until `done()` holds (checked each time a task of the phase changes) or the
        `time.monotonic()` deadline passes; multi-stage phases wait on their stages so."""
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # No await between the check and the clear: nothing can slip in unseen.
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return

    def unanswered(self) -> list[PendingTask]:
        return [t for t in self.tasks.values() if t.state in ("offered", "receiving")]
