"""The tasks of one phase of a round (fit or evaluate) and what came back for them.

A phase is opened with its tasks, takes answers until every task is answered or its deadline
passes, then closes: later answers are refused as `task_closed`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from quorum.aggregation import UpdateSum
from quorum.errors import QuorumError
from quorum.proto import federation_pb2 as pb
from quorum.server.sessions import Session
from quorum.server.validation import Received
from quorum.wire import blobs
from quorum.wire.blobs import Layout
from quorum.wire.codecs import Codec

Kind = Literal["fit", "evaluate"]


class SecureStages(Protocol):
    """A secure-aggregation fit phase's protocol (`quorum.server.secure_fit.SecureFit`): the
    task book hands it what the phase's sites send."""

    def admit_masked(self, task: PendingTask, metrics: dict[str, float]) -> None: ...

    async def add_masked(self, task: PendingTask, data: blobs.Buffer, layout: Layout) -> None: ...

    def drop(self, task: PendingTask, reason: str) -> None: ...

    def receive(self, task: PendingTask, reply: pb.SecAggReply) -> None: ...


class Relay(Protocol):
    """A gossip round's relay (`quorum.server.gossip_relay.GossipRound`): the task book hands it
    the round's parcels and replies, and asks it for a site's parcels."""

    def admit_parcel(self, task: PendingTask, header: pb.UploadHeader) -> None: ...

    async def add_parcel(
        self, task: PendingTask, header: pb.UploadHeader, upload: Received
    ) -> None: ...

    def receive(self, task: PendingTask, reply: pb.GossipReply) -> None: ...

    def parcel_for(self, session: Session, digest: str) -> bytes | None: ...


async def fold_in_thread(fold: Callable[[], None]) -> None:
    """Runs a fold into a round's sum in a worker thread and returns only once it is over, even
    when the awaiting upload is cancelled (its site hung up): a thread cannot be stopped, and
    the caller's fold lock must not be released while the sum is still being written."""
    running = asyncio.ensure_future(asyncio.to_thread(fold))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        raise


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
    model_size: int
    layout: Layout
    max_num_examples: int
    accumulator: UpdateSum | None = None
    codec: Codec | None = None
    """How a fit phase's uploads are encoded (the run's compression); None: plain models."""
    reference: np.ndarray | None = None
    """The flat model a compressed fit phase serves: its uploads are deltas from it."""
    secagg: SecureStages | None = None
    relay: Relay | None = None
    """Set on a gossip round's fit phase: its tasks are the relay's."""
    tasks: dict[str, PendingTask] = field(default_factory=dict)
    results: list[SiteResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """The errors of the tasks whose sites reported that they failed."""
    closed: bool = False
    fold_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _answered: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever one of its tasks is answered or loses its site; multi-stage phases wait
    on it."""

    def ends_on_refusal(self, code: str) -> bool:
        """Whether a refused answer (of this code) ends the site's task: it does for a phase
        whose tasks answer once; a gossip round's sites send several parcels."""
        return True

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
