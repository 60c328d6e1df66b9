"""Asynchronous rounds (FedBuff, Nguyen et al. AISTATS 2022; DESIGN section 5).

Every free site is offered the newest global model at once (up to `max_concurrency` sites
training at a time); it trains and uploads, tagged by its task with the version it started from.
Each upload is weighted by its staleness as it is folded, refused as `stale_update` beyond
`max_staleness`, and every `buffer_size` accepted updates make one server step: a new version,
checkpointed, completed as one round in the store, then evaluated in the background while the
sites go on training. A site's participation row moves to the round its update was applied in,
with its staleness, so a round's record lists its contributors.

Under secure aggregation the server forms cohorts of `buffer_size` free sites ahead of time and
runs SecAgg+ within each: a cohort's unmasked mean is one buffer, weighted by the staleness of
the cohort's base version, so no single update is ever seen. Cohorts run side by side and are
applied in the order they were formed (round r is cohort r).

A server killed mid-buffer restarts from the last step: the partial buffer is discarded and the
interrupted round is recorded as aborted with how many updates it held.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Iterator

import numpy as np

from quorum.aggregation.accumulator import (
    Scratch,
    SlicedBlocks,
    Update,
    UpdateBlocks,
    blocks_of,
)
from quorum.aggregation.fedbuff import FedBuff, StaleUpdate
from quorum.errors import NotFoundError, UploadRejected
from quorum.fitconfig import FitConfig
from quorum.privacy.dp.central import CentralDP, ClippedDelta
from quorum.server.model_files import write_model
from quorum.server.phases import Phase, RoundAborted
from quorum.server.records import RunRecord
from quorum.server.rounds import (
    STOPPED,
    evaluate_metrics,
    model_phase,
    record_release,
    resume,
    run_phase,
    task_sites,
    wait_all,
    wait_for_sites,
)
from quorum.server.secure_fit import SecureFit, masked_layout
from quorum.server.services import RoundServices
from quorum.server.sessions import Session
from quorum.threads import to_the_end
from quorum.wire.blobfiles import BlobFile
from quorum.wire.codecs import make_codec

log = logging.getLogger("quorum.server")

POLL_S = 0.5
"""How often the driver looks for sites that connected or became free, at the latest."""

DROP_VALUES = 8 << 20
"""Values of an update folded between two drops of its base model's pages (32 MiB of float32):
dropping more often would walk the map's page tables more for little memory."""


class AsyncDriver:
    def __init__(self, services: RoundServices, record: RunRecord) -> None:
        self.services = services
        self.store = services.store
        self.run_id = record.id
        self.config = record.checked_config
        self.site_config = self.config.server_strategy().site_config()
        self.fold_lock = asyncio.Lock()  # every fit phase folds into the one buffer
        self.wake = asyncio.Event()
        self.evaluations: set[asyncio.Task[None]] = set()
        self.open: dict[asyncio.Task[None], list[Phase]] = {}
        """Fit work in progress (one site's task, or one SecAgg cohort) and its open phases."""
        self.busy: set[str] = set()
        """Sites with a fit task in progress."""
        self.cooldown: dict[str, tuple[int, float]] = {}
        """Site -> (fits in a row without an accepted update, when it may be offered the next):
        a site whose fits keep failing is not offered one in a tight loop."""
        self.failure: BaseException | None = None
        self.attempt = 0
        """The attempt of the round being filled (plain FedBuff) or last applied (cohorts)."""
        self.ended: str | None = None
        """Why no more updates are taken (the last step was applied, the wall time ran out, an
        operator stopped the run); None while the run goes on."""
        self._rng = random.Random(f"{self.config.seed}/async")
        self.central = CentralDP(self.config.central_dp) if self.config.central_dp.enabled else None
        self.in_buffer: set[str] = set()
        """Sites with an update in the open buffer: under central DP they are offered no work
        until it is applied, so that no site has two updates in one buffer (sensitivity C)."""
        self.clip_scratch = Scratch()
        """The block an update's clipped delta is made in (central DP; folds are serialised)."""

    # ---- the run ----

    async def run(self) -> None:
        cfg = self.config
        done = self.store.last_completed_round(self.run_id)
        discarded = self._buffered(done + 1)
        unit = "cohort" if cfg.secagg.enabled else f"{discarded} of {cfg.buffer_size} update(s)"
        reason = f"the server stopped with {unit} buffered; discarded"
        # In a worker thread, as the sync driver resumes: the checkpoint's hash and NaN check
        # (or the first start's initial model) read a whole model, and sessions are served.
        done, model = await to_the_end(self._resume, reason)
        self.layout = model.layout
        # The model's file, mapped: deltas read it; the step reads the file in blocks. (A
        # model of several dtypes is copied to float64 here: off the event loop too.)
        self.model, self.vector = model, await asyncio.to_thread(model.flat)
        self.published = (done, model, self.vector, 0)
        """(version, model, flat model, attempt of the round it feeds) that new fit tasks get:
        replaced as a whole once a step is checkpointed and its next round opened, since the
        folding thread makes the step while the event loop offers tasks."""
        self.store.set_run_status(self.run_id, "running")
        self.started = self.store.run(self.run_id).started_at or time.time()
        self.loop = asyncio.get_running_loop()
        # Training starts once enough sites are there, as a sync round's would: the first
        # versions are not left to whichever site connected first.
        try:
            await wait_for_sites(
                self.services, self.run_id, cfg.task, cfg.min_available_sites, cfg.wait_timeout_s
            )
        except RoundAborted:  # no round is open yet: nothing to abort
            self.store.set_run_status(self.run_id, "stopped", STOPPED)
            return
        # A site may still be downloading a model a few versions old: keep those.
        kept = self.services.blobs.keep
        self.services.blobs.keep = max(
            kept, 2 + min(cfg.max_concurrency or 64, cfg.max_staleness + 1)
        )
        log.info("event=run_started run_id=%s mode=async from_version=%d", self.run_id, done)
        self._evaluate_if_missing(done)
        try:
            if cfg.secagg.enabled:
                await self._secure_loop()
            else:
                await self._plain_loop()
        finally:
            for work in list(self.open):
                work.cancel()
            await asyncio.gather(*self.open, return_exceptions=True)
            self.services.blobs.keep = kept
        await wait_all(self.evaluations)
        if self.ended == STOPPED:
            self.store.set_run_status(self.run_id, "stopped", self.ended)
            return
        self.store.set_run_status(self.run_id, "completed")
        log.info(
            "event=run_completed run_id=%s versions=%d reason=%s",
            self.run_id,
            self.buffer.version,
            self.ended,
        )

    def _resume(self, interrupted: str) -> tuple[int, BlobFile]:
        """The last completed version and its model; the buffer made from its state (which is
        not kept beyond it: its momentum is a vector of the model's size)."""
        done, model, state = resume(
            self.services,
            self.run_id,
            self.config,
            lambda initial: self._new_buffer(initial.layout.numel, 0).state(),
            interrupted,
        )
        self.buffer = self._new_buffer(model.layout.numel, done)
        self.buffer.load_state(state)
        return done, model

    def _new_buffer(self, numel: int, version: int) -> FedBuff:
        cfg = self.config
        return FedBuff(
            numel,
            # Under SecAgg each buffer is one cohort's mean: one update of the server's step.
            buffer_size=1 if cfg.secagg.enabled else cfg.buffer_size,
            staleness_exponent=cfg.staleness_exponent,
            max_staleness=cfg.max_staleness,
            server_learning_rate=cfg.server_learning_rate,
            server_momentum=cfg.server_momentum,
            version=version,
        )

    def _buffered(self, round_no: int) -> int:
        """Updates already applied to the buffer of `round_no` if that round was left running."""
        try:
            detail = self.store.round_detail(self.run_id, round_no)
        except NotFoundError:
            return 0
        if detail.status != "running":
            return 0
        return sum(1 for p in detail.participants if p.kind == "fit" and p.status == "accepted")

    def _end_reason(self) -> str | None:
        cfg = self.config
        if self.services.stop_requested(self.run_id):
            return STOPPED
        if self.buffer.version >= cfg.rounds:
            return f"reached {cfg.rounds} server steps"
        if cfg.max_wall_time_s is not None and time.time() - self.started > cfg.max_wall_time_s:
            return f"reached max_wall_time_s = {cfg.max_wall_time_s:g}"
        return None

    def _evaluate_if_missing(self, version: int) -> None:
        """A server killed between a step and its evaluation evaluates that version now."""
        if version == 0:
            return
        last = self.store.round_detail(self.run_id, version)
        if "evaluate" not in last.metrics:
            self._evaluate_later(version, last.attempt, self.model)

    def _free_sites(self) -> list[Session]:
        limit = self.config.max_concurrency
        now = time.monotonic()
        sites = [
            s
            for s in task_sites(self.services, self.config.task)
            if s.site not in self.busy
            and self.cooldown.get(s.site, (0, 0.0))[1] <= now
            and not (self.central is not None and s.site in self.in_buffer)
        ]
        room = len(sites) if limit is None else max(0, limit - len(self.busy))
        return sites[:room]

    async def _idle(self) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), POLL_S)
        except TimeoutError:
            pass
        self.wake.clear()

    def _start(
        self, work: asyncio.Task[None], sessions: list[Session], phases: list[Phase]
    ) -> None:
        """`sessions` may grow while the work runs (a cohort refilled after a dropout)."""
        self.open[work] = phases
        self.busy |= {s.site for s in sessions}

        def done(_: asyncio.Task[None]) -> None:
            self.open.pop(work, None)
            self.busy -= {s.site for s in sessions}
            if not work.cancelled() and work.exception() is not None:
                self.failure = self.failure or work.exception()
            self.wake.set()

        work.add_done_callback(done)

    def _check(self) -> str | None:
        """Why the run ends now, if it does; raises what a fit or cohort failed with."""
        if self.failure is not None:
            raise self.failure
        return self._end_reason()

    async def _finish(self, reason: str) -> None:
        """Ends the run's training: open fit tasks are recorded as cancelled, the round being
        filled as aborted with its partial buffer. Under the fold lock: a step being made in
        the folding thread is completed first."""
        async with self.fold_lock:
            self._end(reason)

    def _end(self, reason: str) -> None:
        self.ended = reason
        for phase in (p for phases in self.open.values() for p in phases):
            for task in phase.unanswered():
                self.store.finish_participation(task.id, "cancelled", error=f"the run {reason}")
                # An upload still on its way is refused as `run_ended` when it is folded.
                task.state = "expired"
        if self.buffer.version < self.config.rounds and not self.config.secagg.enabled:
            held = len(self.buffer.buffered)
            self.store.abort_round(
                self.run_id,
                self.buffer.version + 1,
                self.attempt,
                f"the run {reason}; {held} buffered update(s) discarded",
            )

    def _fit_config(self, round_no: int, version: int) -> FitConfig:
        cfg = self.config
        return FitConfig.for_fit(
            {**cfg.site_config, **self.site_config},
            round_no=round_no,
            seed=cfg.seed,
            run_id=self.run_id,
            rounds=cfg.rounds,
            model_version=version,
            compression=cfg.compression,
        )

    # ---- plain FedBuff ----

    async def _plain_loop(self) -> None:
        if self.buffer.version < self.config.rounds:
            self.attempt = self.store.start_round(self.run_id, self.buffer.version + 1)
        self.published = (self.buffer.version, self.model, self.vector, self.attempt)
        while True:
            reason = self._check()
            if reason is not None:
                await self._finish(reason)
                return
            for session in self._free_sites():
                phase = await self._fit_phase()
                self._start(asyncio.ensure_future(self._fit(phase, session)), [session], [phase])
            await self._idle()

    async def _fit_phase(self) -> Phase:
        version, model, vector, attempt = self.published
        phase = await model_phase(
            self.services,
            "fit",
            self.run_id,
            version + 1,
            attempt,
            model,
            self.layout,
            self.config.max_num_examples,
        )
        phase.fold_lock = self.fold_lock
        phase.accumulator = _Buffered(self, phase, version, model, vector)
        # A compressed update is a delta from the version its site trained from.
        phase.codec, phase.reference = make_codec(self.config.compression), vector
        return phase

    async def _fit(self, phase: Phase, session: Session) -> None:
        config = self._fit_config(phase.round, phase.round - 1)
        await run_phase(
            self.services, phase, [session], config, self.config.task, self.config.round_timeout_s
        )
        if phase.results:
            self.cooldown.pop(session.site, None)
        else:  # failed, refused, stale or lost: wait 0.5 s, doubling up to 30 s
            misses = self.cooldown.get(session.site, (0, 0.0))[0] + 1
            delay = min(30.0, 0.5 * 2 ** (misses - 1))
            self.cooldown[session.site] = (misses, time.monotonic() + delay)

    def fold(
        self,
        phase: Phase,
        base_version: int,
        base_file: BlobFile,
        base: np.ndarray,
        update: Update,
        examples: float,
    ) -> None:
        """Buffers one site's model (worker thread, under the shared fold lock); the K-th
        update applies the server step. `base` is the flat vector published with the version
        it was trained from (`base_file`): for a model of one float dtype a map of the file,
        whose pages are let go as the fold goes, never resident whole; for several dtypes the
        float64 copy made once when the version was published, never one per upload. Under
        central DP the update is read twice, block by block (its delta's norm, then its clipped
        delta): no delta of the model's size."""
        # Asked afresh, not only `ended`: uploads queued on the fold lock behind the last step
        # must not make one more before the event loop has ended the run.
        ended = self.ended or self._end_reason()
        if ended is not None:
            raise UploadRejected("run_ended", f"the run {ended}: no more updates are taken")
        try:
            accepted = self.buffer.admit(base_version)
        except StaleUpdate as exc:
            raise UploadRejected("stale_update", str(exc)) from None
        update = letting_go(blocks_of(update, base.shape[0]), base_file)
        try:
            if self.central is not None:  # DP-FedBuff: each update clipped, counting once
                clipping_norm = self.central.clipping_norm
                update = ClippedDelta(update, base, clipping_norm, self.clip_scratch)
                reference, examples = None, 1.0
            else:  # folded block by block, no delta of the model's size
                reference = base
            ((task_id, task),) = phase.tasks.items()
            self.store.apply_update(
                task_id, self.buffer.version + 1, self.attempt, accepted.staleness
            )
            self.in_buffer.add(task.site)
            full = self.buffer.add(update, accepted, examples, reference)
            base_file.drop_pages()
            if full:
                staleness = [a.staleness for a in self.buffer.buffered]
                self._step(
                    {
                        "num_updates": float(len(staleness)),
                        "staleness_mean": float(np.mean(staleness)),
                        "staleness_max": float(max(staleness)),
                    }
                )
        except Exception as exc:  # the buffer or the store broke: the run fails, not one upload
            self.loop.call_soon_threadsafe(self._fail, exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        self.failure = self.failure or exc
        self.wake.set()

    def _step(self, fit_metrics: dict[str, float]) -> None:
        """Applies the server step to the buffer, checkpoints and completes the round, opens the
        next one; then, on the event loop, starts the new model's evaluation."""
        version = self.buffer.version + 1
        noise = None
        if self.central is not None:
            noise, release = self.central.buffer_noise(self.layout.numel)
            # accounted before anything of the step is written: a crash counts it, never loses it
            record_release(self.services, self.run_id, self.central, version, self.attempt, release)
        state = self.buffer.propose(None if noise is None else noise.add_to)
        values = self.buffer.stepped(self.model.values())
        model = write_model(self.services.checkpoints, self.run_id, version, self.model, values)
        self.services.checkpoints.save(self.run_id, version, model, state)
        self.store.complete_round(
            self.run_id, version, self.attempt, model.digest, {"fit": fit_metrics}
        )
        self.buffer.load_state(state)  # applied (and the buffer emptied) once it is durable
        self.in_buffer.clear()
        attempt = self.attempt
        self.model, self.vector = model, model.flat()
        # A cohort opens its own round; plain FedBuff opens the next buffer's here.
        if version < self.config.rounds and not self.config.secagg.enabled:
            self.attempt = self.store.start_round(self.run_id, version + 1)
        self.published = (version, model, self.vector, self.attempt)
        log.info(
            "event=round_completed run_id=%s round=%d staleness_max=%g",
            self.run_id,
            version,
            fit_metrics.get("staleness_max", 0.0),
        )
        self.loop.call_soon_threadsafe(self._evaluate_later, version, attempt, model)

    def _evaluate_later(self, version: int, attempt: int, model: BlobFile) -> None:
        self.wake.set()
        task = asyncio.ensure_future(self._evaluate(version, attempt, model))
        self.evaluations.add(task)
        task.add_done_callback(self.evaluations.discard)

    async def _evaluate(self, version: int, attempt: int, model: BlobFile) -> None:
        cfg = self.config
        sites = task_sites(self.services, cfg.task)
        evaluators = self._rng.sample(sites, math.ceil(cfg.fraction_evaluate * len(sites)))
        if not evaluators:
            return
        phase = await model_phase(
            self.services,
            "evaluate",
            self.run_id,
            version,
            attempt,
            model,
            self.layout,
            cfg.max_num_examples,
        )
        config = FitConfig.for_evaluate(cfg.site_config, round_no=version)
        await run_phase(self.services, phase, evaluators, config, cfg.task, cfg.evaluate_timeout_s)
        if phase.results:
            metrics = evaluate_metrics(phase.results)
            self.store.record_metrics(self.run_id, version, attempt, "evaluate", metrics)

    # ---- FedBuff over SecAgg+ cohorts ----

    async def _secure_loop(self) -> None:
        cfg = self.config
        next_round = self.buffer.version + 1
        applied: asyncio.Future[None] = self.loop.create_future()
        applied.set_result(None)
        while True:
            reason = self._check()
            if reason is not None:
                await self._finish(reason)
                return
            free = self._free_sites()
            if len(free) >= cfg.buffer_size and next_round <= cfg.rounds:
                cohort = free[: cfg.buffer_size]
                previous, applied = applied, self.loop.create_future()
                phases: list[Phase] = []
                work = asyncio.ensure_future(
                    self._cohort(next_round, cohort, phases, previous, applied)
                )
                self._start(work, cohort, phases)
                next_round += 1
            await self._idle()

    async def _cohort(
        self,
        round_no: int,
        cohort: list[Session],
        phases: list[Phase],
        previous: asyncio.Future[None],
        applied: asyncio.Future[None],
    ) -> None:
        """One cohort: a SecAgg+ fit of the newest model, tried again while it aborts or comes
        out too stale, then applied as one buffer once every earlier cohort is."""
        cfg = self.config
        attempt = 0
        try:
            while True:
                # As published: an earlier cohort's step may be under way in its thread.
                version, model, _, _ = self.published
                attempt = self.store.start_round(self.run_id, round_no)
                phase = await model_phase(
                    self.services,
                    "fit",
                    self.run_id,
                    round_no,
                    attempt,
                    model,
                    masked_layout(self.layout.numel + 1),
                    cfg.max_num_examples,
                )
                phases[:] = [phase]
                rng = random.Random(f"{cfg.seed}/{round_no}/{attempt}")
                secure = SecureFit(self.services, phase, cohort, cfg, rng, self.layout.numel)
                try:
                    delta, _, summed = await secure.run(
                        self._fit_config(round_no, version), cfg.task
                    )
                    # Its sites are done: they train in later cohorts while this one waits
                    # for its turn (holding them would starve an earlier cohort's refill).
                    self.busy -= {s.site for s in cohort}
                    cohort.clear()
                    await asyncio.shield(previous)
                    accepted = self.buffer.admit(version)
                except (RoundAborted, StaleUpdate) as exc:
                    self.store.abort_round(self.run_id, round_no, attempt, str(exc))
                    attempt = 0
                    log.warning(
                        "event=round_aborted run_id=%s round=%d reason=%s",
                        self.run_id,
                        round_no,
                        exc,
                    )
                    await self._refill(cohort)
                    continue
                break
            self.attempt = attempt

            def apply() -> None:  # a worker thread, as plain FedBuff's folds and steps are
                nonlocal attempt
                self.buffer.add(delta, accepted)
                self._step(
                    {
                        "num_updates": float(summed),
                        "staleness_mean": float(accepted.staleness),
                        "staleness_max": float(accepted.staleness),
                    }
                )
                attempt = 0  # completed: a cancellation that comes now aborts nothing

            async with self.fold_lock:  # as plain FedBuff's: `_finish` waits for the step
                await to_the_end(apply)
        except asyncio.CancelledError:
            if attempt:
                self.store.abort_round(
                    self.run_id, round_no, attempt, f"the run {self.ended or 'stopped'}"
                )
            raise
        finally:
            if not applied.done():
                applied.set_result(None)

    async def _refill(self, cohort: list[Session]) -> None:
        """Keeps the cohort's connected sites and tops it up to `buffer_size` with free ones,
        so that its round (the cohort's place in the order of steps) is kept."""
        alive = [s for s in cohort if self.services.sessions.get(s.id) is not None]
        self.busy -= {s.site for s in cohort} - {s.site for s in alive}
        cohort[:] = alive
        while len(cohort) < self.config.buffer_size:
            extra = self._free_sites()[: self.config.buffer_size - len(cohort)]
            cohort.extend(extra)
            self.busy |= {s.site for s in extra}
            if len(cohort) < self.config.buffer_size:
                await asyncio.sleep(POLL_S)
        cohort.sort(key=lambda s: s.site)


class _Buffered:
    """A fit phase's sink: folds its one upload into the driver's FedBuff buffer."""

    def __init__(
        self,
        driver: AsyncDriver,
        phase: Phase,
        base_version: int,
        base: BlobFile,
        vector: np.ndarray,
    ) -> None:
        self.driver = driver
        self.phase = phase
        self.base_version = base_version
        self.base = base
        self.vector = vector
        """The version's flat values as published (`BlobFile.flat`, made once per version)."""
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def fold(self, update: Update, weight: float, /) -> None:
        try:
            self.driver.fold(self.phase, self.base_version, self.base, self.vector, update, weight)
        finally:  # however the fold ended, the version's pages are the page cache's again
            self.base.drop_pages()
        self._count += 1


class LettingGo:
    """An update's blocks, which drop the pages of its base model's map (read for the update's
    delta, and by a codec's decoder) every `DROP_VALUES` values: the version a site trained
    from is never resident whole in the server (its pages stay in the page cache)."""

    def __init__(self, update: UpdateBlocks, base: BlobFile) -> None:
        self.update = update
        self.base = base

    @property
    def numel(self) -> int:
        return self.update.numel

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        return self._dropping(self.update.blocks(), 0)

    def _dropping(
        self, blocks: Iterator[tuple[int, np.ndarray]], dropped: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        for start, values in blocks:
            yield start, values  # folded by the time the next block is asked for
            if start + values.shape[0] - dropped >= DROP_VALUES:
                self.base.drop_pages()
                dropped = start + values.shape[0]


class SlicedLettingGo(LettingGo):
    """`LettingGo` of an update that can be read by slice (a plain upload's spool), itself read
    so: its slices are folded side by side (`accumulator.by_slices`)."""

    update: SlicedBlocks

    def blocks_between(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        return self._dropping(self.update.blocks_between(start, stop), start)


def letting_go(update: UpdateBlocks, base: BlobFile) -> LettingGo:
    if isinstance(update, SlicedBlocks):
        return SlicedLettingGo(update, base)
    return LettingGo(update, base)
