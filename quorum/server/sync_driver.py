"""Synchronous rounds: select a cohort, offer fit tasks, fold each validated update as it
arrives, close on all answers or the deadline, apply the server step, evaluate, checkpoint.

A round that cannot finish (too few sites, too few valid updates) is recorded as aborted with
its reason and tried again, up to `max_round_attempts`. A server restarted mid-run resumes from
the last checkpoint: the interrupted round is recorded as aborted and run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random

import numpy as np

from quorum.aggregation import round_sum
from quorum.fitconfig import FitConfig
from quorum.privacy.dp.central import STATE_KEY as CENTRAL_STATE
from quorum.privacy.dp.central import CentralDP, RoundRelease
from quorum.server.model_files import MeanParts, strategy_step, write_model
from quorum.server.phases import Kind, Phase, RoundAborted, RunFailed
from quorum.server.records import RunRecord
from quorum.server.rounds import (
    evaluate_metrics,
    model_phase,
    play_rounds,
    record_release,
    resume,
    run_phase,
    task_sites,
    unweighted,
    wait_for_sites,
    weighted,
)
from quorum.server.secure_fit import SecureFit, masked_layout
from quorum.server.services import RoundServices
from quorum.server.sessions import Session
from quorum.threads import to_the_end
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile
from quorum.wire.codecs import make_codec

log = logging.getLogger("quorum.server")


class SyncDriver:
    def __init__(self, services: RoundServices, record: RunRecord) -> None:
        self.services = services
        self.store = services.store
        self.run_id = record.id
        self.config = record.checked_config
        self.strategy = self.config.server_strategy()
        self.rule = self.config.robust_rule
        self.central = CentralDP(self.config.central_dp) if self.config.central_dp.enabled else None
        # Every round's streaming sum is made in this one vector (`_sum_vector`).
        self._sum: tuple[Phase, np.ndarray] | None = None

    async def run(self) -> None:
        cfg = self.config
        done, model, state = await to_the_end(
            resume,
            self.services,
            self.run_id,
            cfg,
            lambda _: self._state(),
            "the server stopped during the round",
        )
        self._load_state(state)
        self.store.set_run_status(self.run_id, "running")
        log.info("event=run_started run_id=%s from_round=%d", self.run_id, done + 1)

        async def play(round_no: int, attempt: int) -> None:
            nonlocal model
            model = await self._round(round_no, attempt, model)

        await play_rounds(self.services, self.run_id, done + 1, cfg.rounds, play)

    async def _round(self, round_no: int, attempt: int, model: BlobFile) -> BlobFile:
        cfg = self.config
        layout = model.layout
        await wait_for_sites(
            self.services, self.run_id, cfg.task, cfg.min_available_sites, cfg.wait_timeout_s
        )
        available = task_sites(self.services, cfg.task)
        if len(available) < cfg.min_fit_sites:
            raise RoundAborted(
                f"{len(available)} site(s) connected for task {cfg.task!r}; min_fit_sites is "
                f"{cfg.min_fit_sites}"
            )
        rng = random.Random(f"{cfg.seed}/{round_no}/{attempt}")
        cohort = self._sample(
            available, cfg.fraction_fit, cfg.min_fit_sites, cfg.max_fit_sites, rng
        )

        fit_config = FitConfig.for_fit(
            {**cfg.site_config, **self.strategy.site_config()},
            round_no=round_no,
            seed=cfg.seed,
            run_id=self.run_id,
            rounds=cfg.rounds,
            compression=cfg.compression,
        )
        # A view of the model's file: only what needs every value (central DP's clipping, a
        # robust rule, a codec's deltas) reads it whole; the step below reads it in blocks. A
        # model of several dtypes is copied whole into float64 here: in a worker thread.
        current = await asyncio.to_thread(model.flat)
        mean: np.ndarray | MeanParts  # the sites' mean, or a sum to read it from by blocks
        if cfg.secagg.enabled:
            fit = await self._phase(
                "fit", round_no, attempt, model, masked_layout(layout.numel + 1)
            )
            noise = None
            if self.central is not None:
                noise = (self.central.clipping_norm, self.central.site_noise_stddev(len(cohort)))
            vector = await self._sum_vector(fit, layout.numel + 1, np.uint32)
            secure = SecureFit(
                self.services, fit, cohort, cfg, rng, layout.numel, noise, sum_vector=vector
            )
            try:
                decoded, examples, accepted = await secure.run(fit_config, cfg.task)
            finally:
                # The server has seen the noised sum once it is unmasked, even when the round
                # then aborts: that release is accounted.
                if self.central is not None and secure.summed is not None:
                    release = self.central.distributed_release(len(cohort), secure.summed)
                    await self._account(round_no, attempt, release)
            self._check_enough(accepted, cohort, fit)
            weight, mean, of_delta = float(examples), decoded, True
        elif self.central is not None:
            fit = await self._fit_phase(round_no, attempt, model, layout, current)
            clipped = fit.accumulator = self.central.collector(current)
            await self._run_phase(fit, cohort, fit_config, cfg.round_timeout_s)
            self._check_enough(clipped.count, cohort, fit)
            delta, release = await to_the_end(self.central.release, clipped, len(cohort))
            # Accounted before the model leaves the server (evaluation sends it to the sites).
            await self._account(round_no, attempt, release)
            accepted, weight, mean, of_delta = clipped.count, clipped.total_weight, delta, True
        else:
            fit = await self._fit_phase(round_no, attempt, model, layout, current)
            # The plain streaming sum, or the round's updates kept for a robust rule.
            vector = await self._sum_vector(fit, layout.numel, np.float64)
            total = fit.accumulator = round_sum(self.rule, current, len(cohort), vector)
            await self._run_phase(fit, cohort, fit_config, cfg.round_timeout_s)
            self._check_enough(total.count, cohort, fit)
            # Its mean is read block by block as the new model is written, in a thread.
            mean, of_delta = total, False
            accepted, weight = total.count, total.total_weight
        new_model = await to_the_end(
            write_model,
            self.services.checkpoints,
            self.run_id,
            round_no,
            model,
            strategy_step(self.strategy, model, mean, delta=of_delta),
        )
        metrics: dict[str, dict[str, float]] = {
            "fit": {
                # Under SecAgg the sites' metrics are plain, but their weights are masked.
                **(unweighted(fit.results) if cfg.secagg.enabled else weighted(fit.results)),
                "num_sites": float(accepted),
                "num_examples": float(weight),
            }
        }

        connected = task_sites(
            self.services, cfg.task
        )  # sites that joined during the fit phase evaluate too
        evaluators = rng.sample(connected, math.ceil(cfg.fraction_evaluate * len(connected)))
        if evaluators:
            ev = await self._phase("evaluate", round_no, attempt, new_model, layout)
            await self._run_phase(
                ev,
                evaluators,
                FitConfig.for_evaluate(cfg.site_config, round_no=round_no),
                cfg.evaluate_timeout_s,
            )
            if ev.results:
                metrics["evaluate"] = evaluate_metrics(ev.results)

        # The strategy state may be a model-sized vector or two (momentum): written in a thread.
        await to_the_end(
            self.services.checkpoints.save, self.run_id, round_no, new_model, self._state()
        )
        self.store.complete_round(self.run_id, round_no, attempt, new_model.digest, metrics)
        log.info(
            "event=round_completed run_id=%s round=%d updates=%d metrics=%s",
            self.run_id,
            round_no,
            accepted,
            json.dumps(metrics.get("evaluate", {})),
        )
        return new_model

    async def _sum_vector(self, fit: Phase, length: int, dtype: type[np.generic]) -> np.ndarray:
        """The run's vector for `fit`'s sum (float64, or SecAgg+'s uint32): made once, its
        pages faulted in once (a new one per round cost the faults of twice the model's bytes
        every round, a second of CPU per GB here). Handed over once the last phase that summed
        in it is closed and no fold of it still runs (an aborted attempt's fold finishes under
        its fold lock)."""
        if self._sum is None:
            vector = np.empty(length, dtype)
        else:
            last, vector = self._sum
            assert last.closed  # its round ended, or the attempt was aborted
            async with last.fold_lock:
                pass
        self._sum = (fit, vector)
        return vector

    async def _account(self, round_no: int, attempt: int, release: RoundRelease) -> None:
        assert self.central is not None
        await to_the_end(
            record_release, self.services, self.run_id, self.central, round_no, attempt, release
        )

    def _state(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps beside the model: the server optimiser's state and the
        central-DP clipping norm."""
        return {**self.strategy.state(), **(self.central.state() if self.central else {})}

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        self.strategy.load_state({k: v for k, v in state.items() if k != CENTRAL_STATE})
        if self.central is not None:
            self.central.load_state(state)

    def _check_enough(self, accepted: int, cohort: list[Session], fit: Phase) -> None:
        if fit.broken is not None:
            raise RoundAborted(fit.broken)
        errors = set(fit.failures)
        if accepted == 0 and len(fit.failures) == len(cohort) and len(errors) == 1:
            raise RunFailed(
                f"every site of the cohort ({len(cohort)}) failed its fit with the same error, "
                f"which another attempt would repeat: {errors.pop()}"
            )
        if accepted < self.config.min_fit_sites:
            raise RoundAborted(
                f"{accepted} valid update(s) of {len(cohort)} offered; min_fit_sites is "
                f"{self.config.min_fit_sites}"
            )
        least, why = self.rule.minimum_updates()
        if accepted < least:
            raise RoundAborted(f"{accepted} valid update(s) of {len(cohort)} offered; {why}")

    async def _fit_phase(
        self,
        round_no: int,
        attempt: int,
        model: BlobFile,
        layout: blobs.Layout,
        current: np.ndarray,
    ) -> Phase:
        """A fit phase taking the sites' models, or their deltas from `current` encoded by the
        run's codec."""
        fit = await self._phase("fit", round_no, attempt, model, layout)
        fit.codec, fit.reference = make_codec(self.config.compression), current
        return fit

    async def _phase(
        self, kind: Kind, round_no: int, attempt: int, model: BlobFile, layout: blobs.Layout
    ) -> Phase:
        return await model_phase(
            self.services,
            kind,
            self.run_id,
            round_no,
            attempt,
            model,
            layout,
            self.config.max_num_examples,
        )

    async def _run_phase(
        self, phase: Phase, sessions: list[Session], config: FitConfig, timeout: float
    ) -> None:
        await run_phase(self.services, phase, sessions, config, self.config.task, timeout)

    @staticmethod
    def _sample(
        available: list[Session],
        fraction: float,
        minimum: int,
        maximum: int | None,
        rng: random.Random,
    ) -> list[Session]:
        size = max(minimum, math.ceil(fraction * len(available)))
        if maximum is not None:
            size = min(size, maximum)
        return sorted(rng.sample(available, min(size, len(available))), key=lambda s: s.site)
