"""One gossip round on the server: the stages and the relay (DESIGN section 5).

The server only coordinates. It opens one fit task per site with the site's neighbours and
mixing weights, then walks three stages: keys (each site advertises a round key signed with its
identity; the server checks the signature and relays each site its neighbours' keys), send (each
site trains and uploads its model sealed for each neighbour it sends to; the relay keeps the
ciphertexts by sender and receiver), mix (each site is told which ciphertexts are addressed to it
and which neighbours are missing, downloads, decrypts, mixes and reports). A stage ends when
every site still in the round has answered, or at its deadline. The relay never has a key: what
it holds is exactly what the senders uploaded, and only the addressed receiver may download a
ciphertext. A site that leaves (disconnects, fails, is refused) is out of the round from then on;
its neighbours renormalise their weights around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quorum.aggregation.gossip import Mixing
from quorum.config import RunConfig
from quorum.errors import GossipError, UploadRejected
from quorum.fitconfig import FitConfig
from quorum.privacy import gossip_channel as channel
from quorum.proto import federation_pb2 as pb
from quorum.server import validation
from quorum.server.phases import (
    Accepted,
    PendingTask,
    Phase,
    PhaseHandler,
    RoundAborted,
)
from quorum.server.services import RoundServices
from quorum.server.sessions import Session
from quorum.threads import to_the_end
from quorum.wire import digests

STAGES = ("keys", "send", "mix")
_MESSAGE_OF_STAGE = {"keys": "key", "mix": "report"}
LEFT = "the site left the round (it disconnected, failed or was refused)"


PARCEL_LATE = "parcel_late"
SKIP_CODES = frozenset(
    {
        # the site's (`quorum.client.gossip`), and the server's own it passes on
        "bad_key",
        "bad_key_signature",
        "bad_model",
        "relay_tampered",
        "relay_failed",
        "no_key",
        "no_parcel",
        "neighbour_missing",
    }
)
"""Why a site did not mix a neighbour's model: the codes its skips are recorded under."""


@dataclass(frozen=True)
class Parcel:
    digest: str
    data: bytes


class GossipRound(PhaseHandler):
    """The handler of a gossip round's fit phase: its tasks are the relay's."""

    def __init__(
        self,
        services: RoundServices,
        phase: Phase,
        cohort: list[Session],
        config: RunConfig,
        mixing: Mixing,
    ) -> None:
        self.services = services
        self.phase = phase
        self.cohort = cohort
        self.config = config
        self.mixing = mixing
        self.names = [s.site for s in cohort]
        self.identity_keys = [services.store.site(name).public_key for name in self.names]
        n = len(cohort)
        # Site i mixes the models of the sites in its row: each of them sends to i.
        self.senders = {
            i: sorted(j for j, w in mixing[i].items() if j != i and w > 0) for i in range(n)
        }
        self.receivers: dict[int, list[int]] = {i: [] for i in range(n)}
        for i, row in self.senders.items():
            for j in row:
                self.receivers[j].append(i)
        self.stage = "setup"
        self.index: dict[str, int] = {}
        self.tasks: dict[int, PendingTask] = {}
        self.keys: dict[int, pb.GossipKey] = {}
        self.parcels: dict[tuple[int, int], Parcel] = {}
        self.reports: dict[int, pb.GossipReport] = {}
        self.dropped: dict[int, str] = {}
        self.bytes_in: dict[int, int] = {}
        self.stages: list[dict[str, Any]] = []
        self.by_session = {s.id: i for i, s in enumerate(cohort)}
        phase.handler = self

    # ---- the stages (the driver's side) ----

    async def run(self, config: FitConfig, task_ref: str) -> None:
        """Runs the round's stages; the sites' reports are in `reports` afterwards."""
        settings = self.config
        try:
            self.services.book.open_phase(
                self.phase,
                self.cohort,
                config,
                task_ref,
                settings.round_timeout_s + 2 * settings.gossip_stage_timeout_s,
            )
            for task in self.phase.tasks.values():
                self.index[task.id] = self.by_session[task.session_id]
                self.tasks[self.by_session[task.session_id]] = task
            # Each stage waits for the sites still in the round: one gone before its key is
            # not waited for until the deadline.
            await self._stage("keys", lambda: set(self._alive()) - set(self.keys))
            for i in self._alive():
                keys = [self.keys[j] for j in self._peers(i) if j in self.keys]
                self._send(i, pb.GossipStage(keys=pb.GossipKeyList(keys=keys)))
            await self._stage("send", self._parcels_due, settings.round_timeout_s)
            for i in self._alive():
                self._send(i, pb.GossipStage(inbox=self._inbox(i)))
            await self._stage("mix", lambda: set(self._alive()) - set(self.reports))
        finally:
            self.stage = "done"
            self.phase.closed = True
            self.services.book.close_phase(self.phase)
            # The ciphertexts are let go with the round.
            self.parcels.clear()

    def _alive(self) -> list[int]:
        """Sites still in the round: not dropped, and their task not ended without a report."""
        out = []
        for i, task in self.tasks.items():
            if i in self.dropped:
                continue
            if task.state == "done" and i not in self.reports:
                self.dropped[i] = LEFT
                continue
            out.append(i)
        return out

    def _peers(self, i: int) -> list[int]:
        return sorted(set(self.senders[i]) | set(self.receivers[i]))

    def _parcels_due(self) -> set[int]:
        """Sites that still owe a parcel to a neighbour that can receive it."""
        alive = set(self._alive())
        return {
            s
            for s in alive
            if s in self.keys
            for r in self.receivers[s]
            if r in alive and r in self.keys and (s, r) not in self.parcels
        }

    async def _stage(
        self, name: str, waiting: Callable[[], set[int]], timeout: float | None = None
    ) -> None:
        self.stage = name
        started, t0 = time.time(), time.monotonic()
        deadline = t0 + (timeout if timeout is not None else self.config.gossip_stage_timeout_s)
        await self.phase.wait_until(lambda: not waiting(), deadline)
        async with self.phase.fold_lock:
            # Closed under the lock: a parcel being stored now is in, later ones are refused.
            self.stage = f"{name}:closed"
        late = sorted(waiting())
        if name != "send":  # a site late with a parcel may still mix what it receives
            for i in late:
                self.dropped.setdefault(i, f"no answer before the {name} deadline")
        self.stages.append(
            {
                "stage": name,
                "started_at": started,
                "duration_s": time.monotonic() - t0,
                "late": [self.names[i] for i in late],
            }
        )

    def _setup(self, i: int) -> pb.GossipSetup:
        row = self.mixing[i]
        return pb.GossipSetup(
            index=i,
            peers=[
                pb.GossipPeer(
                    index=j,
                    name=self.names[j],
                    identity_key=self.identity_keys[j],
                    weight=row.get(j, 0.0),
                    send=j in self.receivers[i],
                )
                for j in self._peers(i)
            ],
            self_weight=row.get(i, 0.0),
            attempt=self.phase.attempt,
            stage_timeout_s=self.config.gossip_stage_timeout_s,
            topology=self.config.topology,
        )

    def _inbox(self, i: int) -> pb.GossipInbox:
        parcels, missing = [], []
        for j in self.senders[i]:
            parcel = self.parcels.get((j, i))
            if parcel is not None:
                parcels.append(
                    pb.GossipParcel(sender=j, digest=parcel.digest, size=len(parcel.data))
                )
            else:
                missing.append(pb.GossipMissing(index=j, reason=self._why_missing(j, i)))
        return pb.GossipInbox(parcels=parcels, missing=missing)

    def _why_missing(self, sender: int, receiver: int) -> str:
        if sender in self.dropped:
            return f"neighbour_missing: {self.dropped[sender]}"
        if sender not in self.keys:
            return "neighbour_missing: no round key before the keys deadline"
        if receiver not in self.keys:
            return "no_key: this site's round key was not relayed to the neighbour"
        return "neighbour_missing: no model before the send deadline"

    def _send(self, i: int, stage: pb.GossipStage) -> None:
        stage.task_id = self.tasks[i].id
        self.cohort[i].send(pb.ServerMessage(gossip=stage))

    # ---- the phase's handler (called by the task book) ----

    def offer(self, offer: pb.TaskOffer, session: Session) -> None:
        offer.gossip.CopyFrom(self._setup(self.by_session[session.id]))

    def ends_on_refusal(self, code: str) -> bool:
        # A parcel that missed the send deadline is not relayed, but its site still mixes what
        # it receives and reports: that refusal does not take it out of the round.
        return code != PARCEL_LATE

    def serves(self, task: PendingTask, digest: str, relayed: bool) -> bool:
        return relayed or super().serves(task, digest, relayed)

    def on_gossip(self, task: PendingTask, reply: pb.GossipReply) -> None:
        """A site's round key or its report; raises UploadRejected."""
        i = self.index[task.id]
        if task.state == "done":
            raise UploadRejected("task_closed", "this site's part of the round has ended")
        kind = reply.WhichOneof("stage")
        if kind is None or kind != _MESSAGE_OF_STAGE.get(self.stage):
            raise UploadRejected(
                "wrong_stage", f"a {kind!r} message arrived during the {self.stage} stage"
            )
        if kind == "key":
            self._receive_key(i, reply.key)
        else:
            self._receive_report(task, i, reply.report)
        self.phase.changed.set()

    def _receive_key(self, i: int, key: pb.GossipKey) -> None:
        if key.index != i or i in self.keys:
            raise UploadRejected("gossip_protocol", f"site {i} sent a key for index {key.index}")
        phase = self.phase
        try:
            channel.verify_key(
                self.identity_keys[i],
                phase.run_id,
                phase.round,
                phase.attempt,
                i,
                key.public_key,
                key.signature,
            )
        except GossipError as exc:
            raise UploadRejected(exc.code, exc.message) from None
        if len(key.public_key) != 32:
            raise UploadRejected("bad_key", "a round key is 32 bytes of X25519")
        self.keys[i] = key

    def _receive_report(self, task: PendingTask, i: int, report: pb.GossipReport) -> None:
        if i in self.reports:
            raise UploadRejected("duplicate", "this site already reported the round")
        metrics = validation.parse_metrics(report.metrics_json)
        validation.check_num_examples(report.num_examples, self.phase.max_num_examples, 0)
        validation.check_duration(report.duration_s)
        for d in report.distances:
            if d.index not in self.senders[i] or not d.distance >= 0:
                raise UploadRejected("gossip_protocol", f"a distance to non-neighbour {d.index}")
        skipped = [s.index for s in report.skipped]
        for j in skipped:
            if j not in self.senders[i]:
                raise UploadRejected("gossip_protocol", f"a skip of non-neighbour {j}")
        if len(set(skipped)) != len(skipped):  # each is one store row and event
            raise UploadRejected("gossip_protocol", "a neighbour skipped twice")
        self.reports[i] = report
        named = {f"distance_to:{self.names[d.index]}": d.distance for d in report.distances}
        self.services.store.finish_participation(
            task.id,
            "ok",
            num_examples=int(report.num_examples),
            metrics={**metrics, **named},
            duration_s=report.duration_s,
            bytes_in=self.bytes_in.get(i, 0),
        )
        phase = self.phase
        for s in report.skipped:
            code, _, message = s.reason[:500].partition(": ")
            if code not in SKIP_CODES:  # a code is a metric's label: only the site's own
                code, message = "skipped", s.reason[:500]
            self.services.store.reject(
                code,
                f"{self.names[i]} did not mix the model of {self.names[s.index]}: {message}",
                run_id=phase.run_id,
                round_no=phase.round,
                attempt=phase.attempt,
                site=self.names[i],
                task_id=task.id,
            )
            self.services.store.event(
                "gossip_pair_skipped",
                run_id=phase.run_id,
                round=phase.round,
                attempt=phase.attempt,
                receiver=self.names[i],
                sender=self.names[s.index],
                reason=s.reason[:500],
            )
        phase.finish(task)

    def admit(self, task: PendingTask, header: pb.UploadHeader) -> bool:
        """Checks a parcel's header before its bytes are read; the task stays open for the
        site's other parcels and its report."""
        i = self.index[task.id]
        if not header.HasField("gossip"):
            raise UploadRejected(
                "gossip_parcel_expected", "a gossip round takes sealed models for neighbours"
            )
        if header.digest_algorithm not in ("", digests.SHA256):
            raise UploadRejected(
                "parcel_digest", "a parcel's digest is its address for its receiver: SHA-256"
            )
        r = header.gossip.receiver
        if self.stage == "keys":
            raise UploadRejected("wrong_stage", "a parcel arrived during the keys stage")
        if self.stage != "send":
            raise UploadRejected(PARCEL_LATE, "the send stage closed at its deadline")
        if r not in self.receivers[i] or r not in self.keys or i not in self.keys:
            raise UploadRejected("not_a_receiver", f"site {r} does not take this site's model")
        if (i, r) in self.parcels:
            raise UploadRejected("duplicate", f"a model for site {r} was already relayed")
        limit = self.phase.model_size + validation.HEADER_SLACK_BYTES + channel.OVERHEAD_BYTES
        if header.size > limit:
            raise UploadRejected("oversized", f"a parcel of this model is at most {limit} bytes")
        return False

    async def accept(
        self,
        task: PendingTask,
        header: pb.UploadHeader,
        upload: validation.Received,
        accepted: Accepted,
    ) -> None:
        """Keeps a received ciphertext for its receiver, exactly as it arrived; the site's
        report is its task's answer (`on_gossip`)."""
        digest = upload.digest
        if digest != header.digest:
            raise UploadRejected("digest_mismatch", "the parcel does not hash to its digest")
        # To the end, cancelled or not: the spool is written over by the next upload next.
        data = bytes(await to_the_end(upload.read))
        i, r = self.index[task.id], header.gossip.receiver
        async with self.phase.fold_lock:
            if self.stage != "send":
                raise UploadRejected(PARCEL_LATE, "the send stage closed at its deadline")
            if (i, r) in self.parcels:
                raise UploadRejected("duplicate", f"a model for site {r} was already relayed")
            self.parcels[(i, r)] = Parcel(digest, data)
        self.bytes_in[i] = self.bytes_in.get(i, 0) + len(data)
        self.phase.changed.set()

    def parcel_for(self, session: Session, digest: str) -> bytes | None:
        """A ciphertext, only for the session of the site it is addressed to."""
        for (_, r), parcel in self.parcels.items():
            if parcel.digest == digest and self.cohort[r].id == session.id:
                return parcel.data
        return None


def check_cohort(names: list[str], minimum: int) -> None:
    if len(names) < max(2, minimum):
        raise RoundAborted(
            f"{len(names)} site(s) connected; a gossip round needs at least {max(2, minimum)}"
        )
