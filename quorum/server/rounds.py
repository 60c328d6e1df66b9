"""The pieces every mode's round loop is built of: the sites that run a task, the loop of
rounds with its retries, a phase serving a model, running a phase to its deadline, resuming a
run from its last checkpoint, and the means of the sites' metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from quorum.config import RunConfig
from quorum.errors import QuorumError
from quorum.fitconfig import FitConfig
from quorum.privacy.dp.accounting import appended
from quorum.privacy.dp.central import CentralDP, RoundRelease, history_of
from quorum.server.phases import Kind, Phase, RoundAborted, RunFailed, SiteResult
from quorum.server.services import RoundServices
from quorum.server.sessions import Session
from quorum.task import load_task
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobFile

log = logging.getLogger("quorum.server")

MAX_ROUND_ATTEMPTS = 5
STOPPED = "stopped by an operator"


async def play_rounds(
    services: RoundServices,
    run_id: str,
    first: int,
    last: int,
    play: Callable[[int, int], Awaitable[None]],
) -> None:
    """Plays rounds `first`..`last` in order with `play(round, attempt)`, then marks the run
    completed. A round that raises RoundAborted is recorded as aborted with its reason and
    tried again, up to MAX_ROUND_ATTEMPTS times in a row (then the run fails; at once for
    RunFailed); an operator's
    stop ends the run before the next round."""
    round_no, failures = first, 0
    while round_no <= last:
        if services.stop_requested(run_id):
            services.store.set_run_status(run_id, "stopped", STOPPED)
            return
        attempt = services.store.start_round(run_id, round_no)
        try:
            await play(round_no, attempt)
        except RoundAborted as exc:
            services.store.abort_round(run_id, round_no, attempt, str(exc))
            log.warning("event=round_aborted run_id=%s round=%d reason=%s", run_id, round_no, exc)
            if isinstance(exc, RunFailed):
                raise QuorumError(str(exc)) from None
            if services.stop_requested(run_id):
                continue  # stopped, not failed: the loop's top ends the run
            failures += 1
            if failures >= MAX_ROUND_ATTEMPTS:
                raise QuorumError(
                    f"round {round_no} aborted {failures} times; last reason: {exc}"
                ) from None
            continue
        failures = 0
        round_no += 1
    services.store.set_run_status(run_id, "completed")
    log.info("event=run_completed run_id=%s", run_id)


async def wait_for_sites(
    services: RoundServices, run_id: str, task: str, count: int, timeout: float
) -> None:
    """A round's wait for `count` connected sites of the run's `task` (or `timeout`): sites
    of other tasks' runs do not count. An operator's stop ends the wait, and the attempt, at
    once."""
    await services.sessions.wait_for(
        count, timeout, unless=lambda: services.stop_requested(run_id), task=task
    )
    if services.stop_requested(run_id):
        raise RoundAborted(STOPPED)


def record_release(
    services: RoundServices,
    run_id: str,
    central: CentralDP,
    round_no: int,
    attempt: int,
    release: RoundRelease,
) -> None:
    """Stores a central-DP release with its attempt at once, as the attempt's `central_dp`
    metrics (ε over every release so far): the store is the accountant's record, so a restart
    counts every release, whatever became of its round, and nothing twice."""
    released = [m for _, _, m in services.store.phase_metrics(run_id, "central_dp")]
    history = appended(history_of(released), release.entry())
    metrics = central.metrics(release, history)
    services.store.record_metrics(run_id, round_no, attempt, "central_dp", metrics)


def task_sites(services: RoundServices, task: str) -> list[Session]:
    """Connected sites whose agents run `task`."""
    return [s for s in services.sessions.connected() if s.task == task]


def resume(
    services: RoundServices,
    run_id: str,
    config: RunConfig,
    initial_state: Callable[[BlobFile], Mapping[str, np.ndarray]],
    interrupted: str,
) -> tuple[int, BlobFile, dict[str, np.ndarray]]:
    """(last completed round, its model, its strategy state). The first start checkpoints the
    task's initial model as round 0 with `initial_state(model)`; a restart records the round it
    interrupted as aborted with the reason `interrupted`. Reads or writes the whole model (the
    checkpoint's check, the initial model): call it in a worker thread (the store takes calls
    from one), so that the event loop goes on serving every session."""
    done = services.store.last_completed_round(run_id)
    if services.store.abort_interrupted_rounds(run_id, interrupted):
        log.warning("event=round_recovered run_id=%s resume_after=%d", run_id, done)
    if done == 0 and not services.checkpoints.exists(run_id, 0):
        initial = load_task(config.task).initial_parameters(config.seed)
        staged = services.checkpoints.stage_params(run_id, 0, initial)
        services.checkpoints.save(run_id, 0, staged, initial_state(staged))
    model, state = services.checkpoints.open(run_id, done)
    if done:
        check_checkpoint(services, run_id, done, model, state)
    return done, model, state


def check_checkpoint(
    services: RoundServices,
    run_id: str,
    round_no: int,
    model: BlobFile,
    state: Mapping[str, np.ndarray],
) -> None:
    """A checkpoint damaged on disk is never served: its model must hash to the digest the
    store recorded when the round completed, and hold finite values, as its strategy state
    must. Fails the run with the file's name and what to do."""
    path = services.checkpoints.model_path(run_id, round_no)
    recorded = services.store.model_digest(run_id, round_no)
    problem = None
    if recorded and model.digest != recorded:
        problem = "does not hash to the digest recorded when the round completed"
    elif not model.all_finite():
        problem = "holds NaN or infinite values"
    elif not all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f"):
        problem = "has a strategy state with NaN or infinite values"
    if problem is not None:
        raise QuorumError(
            f"the checkpoint of round {round_no} ({path}) {problem}: it is damaged, so the run "
            "cannot resume from it. Restore the state directory from a backup, or submit the "
            "run again to start it over"
        )


async def model_phase(
    services: RoundServices,
    kind: Kind,
    run_id: str,
    round_no: int,
    attempt: int,
    model: BlobFile,
    layout: blobs.Layout,
    max_num_examples: int,
) -> Phase:
    """A phase serving `model`; its uploads must have `layout`. A model with NaN or infinite
    values (a server step that diverged) is not sent: the round is aborted. Its digest and
    values are read in a worker thread the first time (a file not in the page cache waits on
    the disk, and the event loop serves every session)."""
    # The digests are read too: a BlobFile not from its writer hashes the whole file for them.
    _, _, finite = await asyncio.to_thread(lambda: (model.digest, model.blake3, model.all_finite()))
    if not finite:
        raise RoundAborted(
            "the model to send holds NaN or infinite values (the server step diverged); "
            "it was not sent"
        )
    digest = services.blobs.put(model)
    return Phase(
        kind=kind,
        run_id=run_id,
        round=round_no,
        attempt=attempt,
        model_digest=digest,
        model_blake3=model.blake3,
        model_size=len(model),
        layout=layout,
        max_num_examples=max_num_examples,
    )


async def run_phase(
    services: RoundServices,
    phase: Phase,
    sessions: list[Session],
    config: FitConfig,
    task: str,
    timeout: float,
) -> None:
    """Offers the phase's tasks and waits until they are answered or the deadline passes."""
    services.book.open_phase(phase, sessions, config, task, timeout)
    try:
        await phase.wait(timeout)
    finally:
        services.book.close_phase(phase)


def evaluate_metrics(results: list[SiteResult]) -> dict[str, float]:
    """What a round records of an evaluate phase: example-weighted means, the plain mean over
    sites (`*_mean_sites`) and the number of sites."""
    return {
        **weighted(results),
        **{f"{k}_mean_sites": v for k, v in unweighted(results).items()},
        "num_sites": float(len(results)),
    }


def weighted(results: list[SiteResult]) -> dict[str, float]:
    """Example-weighted mean of each metric over the sites that reported it."""
    out: dict[str, float] = {}
    for name in sorted({k for r in results for k in r.metrics}):
        pairs = [(r.metrics[name], r.num_examples) for r in results if name in r.metrics]
        total = sum(n for _, n in pairs)
        out[name] = sum(v * n for v, n in pairs) / total if total else 0.0
    return out


def unweighted(results: list[SiteResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in sorted({k for r in results for k in r.metrics}):
        values = [r.metrics[name] for r in results if name in r.metrics]
        out[name] = sum(values) / len(values)
    return out


async def wait_all(tasks: set[asyncio.Task[None]]) -> None:
    """Waits for background tasks, surfacing the first failure."""
    if tasks:
        for task in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(task, BaseException):
                raise task
