"""The task book: every task offered to a site and what became of it. It opens and closes a
round's phases (one task per site), and it is where every answer from a site (an upload, a
result, a secure-aggregation or gossip message, a download, a disconnect) is checked against
its task, handed to the task's phase's handler (`phases.PhaseHandler`) and recorded.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable

from quorum.errors import UploadRejected
from quorum.fitconfig import FitConfig
from quorum.proto import federation_pb2 as pb
from quorum.server import validation
from quorum.server.phases import PendingTask, Phase, SiteResult, task_closed
from quorum.server.sessions import Session, SessionRegistry
from quorum.server.store import Store
from quorum.wire import digests

log = logging.getLogger("quorum.server")

REMEMBERED_TASKS = 10_000
ID_CHARS = 64
"""How much of an id from the wire is recorded or shown: an Upload call needs no session, so
whoever reaches the port could otherwise write megabytes to the store per call."""

_KIND = {"fit": pb.TASK_KIND_FIT, "evaluate": pb.TASK_KIND_EVALUATE}
_STATUS = {
    pb.RESULT_STATUS_OK: "ok",
    pb.RESULT_STATUS_FAILED: "failed",
    pb.RESULT_STATUS_REFUSED: "refused",
}


class TaskBook:
    def __init__(self, store: Store, sessions: SessionRegistry) -> None:
        self.store = store
        self.sessions = sessions
        self._open_phases: list[Phase] = []
        # Open tasks, and the most recent closed ones so that late or replayed answers are
        # refused with the right reason and counted against their round.
        self._tasks: OrderedDict[str, PendingTask] = OrderedDict()

    # ---- phases ----

    def open_phase(
        self,
        phase: Phase,
        sessions: list[Session],
        config: FitConfig,
        task: str,
        deadline_s: float,
    ) -> None:
        """Creates one task per session, records it and sends the offer (with what the phase's
        handler adds for the session: its SecAgg setup, its gossip neighbours)."""
        self._open_phases.append(phase)
        for session in sessions:
            task_id = secrets.token_hex(12)
            pending = PendingTask(id=task_id, site=session.site, session_id=session.id, phase=phase)
            phase.tasks[task_id] = pending
            self._tasks[task_id] = pending
            if len(self._tasks) > REMEMBERED_TASKS:
                self._tasks.popitem(last=False)
            self.store.offer(
                task_id,
                phase.run_id,
                phase.round,
                phase.attempt,
                session.site,
                phase.kind,
                bytes_out=0,
            )
            offer = pb.TaskOffer(
                task_id=task_id,
                run_id=phase.run_id,
                round=phase.round,
                kind=_KIND[phase.kind],
                task=task,
                model_digest=phase.model_digest,
                model_blake3=phase.model_blake3,
                model_size=phase.model_size,
                config_json=config.to_json(),
                deadline_s=deadline_s,
            )
            phase.handler.offer(offer, session)
            session.send(pb.ServerMessage(task=offer))

    def close_phase(self, phase: Phase) -> None:
        """Records the tasks nobody answered before the deadline. The phase is remembered with
        its tasks (to refuse late answers), so it lets go of its sum (the driver holds it) and
        of the model its compressed uploads were deltas from."""
        self._open_phases.remove(phase)
        phase.closed = True  # also when its driver was cancelled before the deadline
        phase.accumulator = None
        phase.reference = None
        for task in phase.unanswered():
            self.store.finish_participation(
                task.id, "timed_out", error="no answer before the deadline"
            )
            task.state = "expired"

    # ---- what sites send ----

    def _task_for(
        self,
        session: Session,
        task_id: str,
        run_id: str | None = None,
        round_no: int | None = None,
        *,
        once: bool = True,
    ) -> PendingTask:
        """The open task an answer names, checked against what the answer claims: offered to
        this session (in this run and round, when the answer names them), its phase not closed
        and (`once`: an upload or a result, the task's one answer) not answered yet; stage
        messages come many to a task. Raises UploadRejected."""
        task = self._tasks.get(task_id)
        shown = repr(task_id[:ID_CHARS])  # the wire's text, in a message that is stored
        if task is None:
            raise UploadRejected("unknown_task", f"no open task {shown} (closed or never offered)")
        if task.session_id != session.id:
            raise UploadRejected("wrong_session", f"task {shown} was offered to another session")
        if run_id is not None and run_id != task.phase.run_id:
            raise UploadRejected(
                "wrong_run",
                f"task {shown} belongs to run {task.phase.run_id!r}, not {run_id[:ID_CHARS]!r}",
            )
        if round_no is not None and round_no != task.phase.round:
            raise UploadRejected(
                "wrong_round",
                f"task {shown} belongs to round {task.phase.round}, not {round_no}",
            )
        if once and task.state in ("receiving", "done"):
            raise UploadRejected("duplicate", f"task {shown} was already answered")
        if task.phase.closed:
            raise task_closed(task_id)
        return task

    def admit_upload(self, session: Session, header: pb.UploadHeader) -> PendingTask:
        """Checks an upload's header before any of its bytes are read."""
        task = self._task_for(session, header.task_id, header.run_id, header.round)
        validation.check_duration(header.duration_s)
        if header.digest_algorithm not in digests.ACCEPTED:
            raise UploadRejected(
                "unknown_digest",
                f"digest algorithm {header.digest_algorithm[:64]!r} is not one of "
                f"{', '.join(digests.UPLOAD_DIGESTS)}",
            )
        if task.phase.handler.admit(task, header):
            task.state = "receiving"  # else the task stays open for more (a gossip parcel)
        return task

    async def complete_upload(
        self, task: PendingTask, header: pb.UploadHeader, upload: validation.Received
    ) -> None:
        """Hands the bytes to the task's phase (validated and folded into the round's sum, for
        a plain fit phase); raises UploadRejected."""
        self._check_received(task, header, upload)
        nbytes = upload.size
        await task.phase.handler.accept(
            task, header, upload, lambda n: self._accepted(task, header, n, nbytes)
        )

    def upload_broken(self, task: PendingTask, reason: str) -> None:
        """An admitted upload that ended with no answer (the site hung up, its call was
        cancelled or broke): its task ends as lost at once, as a disconnected site's open task
        does, so that the round does not wait for it until its deadline and an async run
        offers the site work again when it rejoins."""
        if task.state != "receiving" or task.phase.closed:
            return  # answered meanwhile (taken or refused), or recorded by the phase's close
        task.phase.handler.drop(task, reason)
        self.store.finish_participation(task.id, "lost", error=reason)
        task.phase.finish(task)

    def _check_received(
        self, task: PendingTask, header: pb.UploadHeader, upload: validation.Received
    ) -> None:
        """What every upload must be once its bytes are in: from a session still open, as
        long as its header said."""
        if self.sessions.get(task.session_id) is None:
            raise UploadRejected("session_closed", "the site's session ended (revoked or lost)")
        if upload.size != header.size:
            raise UploadRejected(
                "size_mismatch", f"received {upload.size} bytes, header declared {header.size}"
            )

    def _accepted(
        self, task: PendingTask, header: pb.UploadHeader, num_examples: int, nbytes: int
    ) -> None:
        """Records an accepted upload: `nbytes` on the wire, against what the update would
        have been uncompressed (the model's size) when the run compresses its uploads."""
        metrics = validation.parse_metrics(header.metrics_json)  # checked when the upload began
        task.phase.results.append(SiteResult(task.site, num_examples, metrics))
        self.store.finish_participation(
            task.id,
            "accepted",
            num_examples=num_examples,
            metrics=metrics,
            duration_s=header.duration_s,
            bytes_in=nbytes,
            bytes_in_uncompressed=task.phase.model_size if task.phase.codec else None,
        )
        task.phase.finish(task)

    def refuse(
        self,
        session: Session | None,
        task_id: str,
        exc: UploadRejected,
        claimed: tuple[str, int] | None = None,
    ) -> None:
        """Records a refused upload or result against the round it names. When it answers an
        open task of this session, that task ends as rejected: the site gave its answer and it
        was bad, so the round need not wait for it. Unknown tasks, other sessions' tasks and
        second answers are only counted; an unknown task is counted against the open round
        its sender `claimed` (run id, round), if there is one."""
        task = self._tasks.get(task_id)
        phase = task.phase if task is not None else None
        # The site's answer was bad: it is out of its task. A second answer is not its answer
        # (the first may still be in flight, or in: a SecAgg site that owes its unmask shares).
        ended = (
            task
            if task is not None
            and session is not None
            and task.session_id == session.id
            and exc.code != "duplicate"
            and task.phase.handler.ends_on_refusal(exc.code)
            else None
        )
        if ended is not None:
            ended.phase.handler.drop(ended, f"refused: {exc.code}: {exc.message}")
        if phase is None and claimed is not None:
            phase = next((p for p in self._open_phases if (p.run_id, p.round) == claimed), None)
        self.store.reject(
            exc.code,
            exc.message,
            run_id=phase.run_id if phase else None,
            round_no=phase.round if phase else None,
            attempt=phase.attempt if phase else None,
            site=session.site if session else None,
            task_id=task_id[:ID_CHARS] or None,  # a task's id is 24: an unknown one is cut
        )
        if ended is not None and ended.state in ("offered", "receiving") and not ended.phase.closed:
            self.store.finish_participation(
                ended.id, "rejected", error=f"{exc.code}: {exc.message}"
            )
            ended.phase.finish(ended)
        log.warning(
            "event=refused code=%s site=%s task_id=%s message=%s",
            exc.code,
            session.site if session else "?",
            task_id[:ID_CHARS],
            exc.message,
        )

    def on_result(self, session: Session, result: pb.TaskResult) -> None:
        """An evaluate answer, or a site's report that it failed or refused a task."""
        task = self._tasks.get(result.task_id)
        if (
            task is not None
            and task.session_id == session.id
            and result.status != pb.RESULT_STATUS_OK
        ):
            task.phase.handler.drop(task, f"the site reported: {result.error[:500]}")
            if task.state in ("receiving", "done") or task.phase.closed:
                # Its upload was its answer (in flight, taken, or broken off and ended by
                # `upload_broken`; a SecAgg site that owes its unmask shares leaves now): a
                # dropout, not a second answer to refuse.
                log.info("event=late_failure_report site=%s task_id=%s", session.site, task.id)
                return
        try:
            task = self._task_for(session, result.task_id)
            validation.check_duration(result.duration_s)
            status = _STATUS.get(result.status)
            if status is None:
                raise UploadRejected("bad_status", "result status is unspecified")
            if status != "ok":
                if status == "failed":
                    task.phase.failures.append(result.error[:2000])
                self.store.finish_participation(
                    task.id, status, duration_s=result.duration_s, error=result.error[:2000]
                )
                task.phase.finish(task)
                return
            answer = task.phase.handler.result(task, result)
        except UploadRejected as exc:
            self._refuse_on_stream(session, result.task_id, exc)
            return
        if answer.num_examples:  # an empty evaluation does not count in the round's means
            task.phase.results.append(answer)
        self.store.finish_participation(
            task.id,
            "ok",
            num_examples=answer.num_examples,
            metrics=answer.metrics,
            duration_s=result.duration_s,
        )
        task.phase.finish(task)

    def _open_tasks(self, session: Session) -> list[PendingTask]:
        return [
            task
            for phase in self._open_phases
            for task in phase.tasks.values()
            if task.session_id == session.id
        ]

    def on_download(self, session: Session, digest: str, nbytes: int, relayed: bool) -> None:
        """Counts a download against the task it served: the task's model, or (`relayed`) a
        gossip parcel for the site's open gossip task."""
        for task in self._open_tasks(session):
            if task.phase.handler.serves(task, digest, relayed):
                self.store.add_bytes_out(task.id, nbytes)
                return

    def on_secagg(self, session: Session, reply: pb.SecAggReply) -> None:
        """A secure-aggregation message: keys, key shares or unmask shares."""
        self._on_stage_reply(session, reply.task_id, lambda t: t.phase.handler.on_secagg(t, reply))

    def on_gossip(self, session: Session, reply: pb.GossipReply) -> None:
        """A gossip round's message: a site's signed round key, or its report."""
        self._on_stage_reply(session, reply.task_id, lambda t: t.phase.handler.on_gossip(t, reply))

    def _on_stage_reply(
        self, session: Session, task_id: str, receive: Callable[[PendingTask], None]
    ) -> None:
        """A multi-stage task's message on the session stream: checked against its open task,
        handed to `receive`; a refusal is recorded and told to the site."""
        try:
            receive(self._task_for(session, task_id, once=False))
        except UploadRejected as exc:
            self._refuse_on_stream(session, task_id, exc)

    def _refuse_on_stream(self, session: Session, task_id: str, exc: UploadRejected) -> None:
        """A refused message of the session stream (a result, a stage message): recorded, and
        told to the site in a notice (an upload's refusal is in its receipt)."""
        self.refuse(session, task_id, exc)
        session.send(
            pb.ServerMessage(notice=pb.Notice(task_id=task_id, code=exc.code, message=exc.message))
        )

    def relayed(self, session: Session, digest: str) -> bytes | None:
        """A gossip ciphertext addressed to this session's site, if one is held."""
        for phase in self._open_phases:
            data = phase.handler.parcel_for(session, digest)
            if data is not None:
                return data
        return None

    def on_disconnect(self, session: Session) -> None:
        """The site's open tasks will not be answered: record them so the round need not wait."""
        for task in self._open_tasks(session):
            task.phase.handler.drop(task, "the site disconnected")
            if task.state == "offered":
                self.store.finish_participation(task.id, "lost", error="the site disconnected")
                task.phase.finish(task)
