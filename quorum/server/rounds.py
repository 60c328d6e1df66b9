"""The pieces every mode's round loop is built of: the sites that run a task, a phase serving a
model, running a phase to its deadline, resuming a run from its last checkpoint, and the means
of the sites' metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from quorum.config import RunConfig
from quorum.server.phases import Kind, Phase, SiteResult
from quorum.server.sessions import Session
from quorum.task import load_task
from quorum.wire import blobs

if TYPE_CHECKING:
    from quorum.server.coordinator import Coordinator

log = logging.getLogger("quorum.server")


def task_sites(co: Coordinator, task: str) -> list[Session]:
    """Connected sites whose agents run `task`."""
    return [s for s in co.sessions.connected() if s.task == task]


def resume(
    co: Coordinator,
    run_id: str,
    config: RunConfig,
    initial_state: Callable[[bytes], Mapping[str, np.ndarray]],
    interrupted: str,
) -> tuple[int, bytes, dict[str, np.ndarray]]:
    """(last completed round, its model, its strategy state). The first start checkpoints the
    task's initial model as round 0 with `initial_state(model)`; a restart records the round it
    interrupted as aborted with the reason `interrupted`."""
    done = co.store.last_completed_round(run_id)
    if co.store.abort_interrupted_rounds(run_id, interrupted):
        log.warning("event=round_recovered run_id=%s resume_after=%d", run_id, done)
    if done == 0 and not co.checkpoints.exists(run_id, 0):
        initial = load_task(config.task).initial_parameters(config.seed)
        model = blobs.encode(initial)
        co.checkpoints.save(run_id, 0, model, initial_state(model))
    model, state = co.checkpoints.load(run_id, done)
    return done, model, state


def model_phase(
    co: Coordinator,
    kind: Kind,
    run_id: str,
    round_no: int,
    attempt: int,
    model: bytes,
    layout: blobs.Layout,
    max_num_examples: int,
) -> Phase:
    """A phase serving `model`; its uploads must have `layout`."""
    digest = co.blobs.put(model)
    return Phase(
        kind=kind,
        run_id=run_id,
        round=round_no,
        attempt=attempt,
        model_digest=digest,
        model_size=len(model),
        layout=layout,
        max_num_examples=max_num_examples,
    )


async def run_phase(
    co: Coordinator,
    phase: Phase,
    sessions: list[Session],
    site_config: Mapping[str, object],
    task: str,
    timeout: float,
) -> None:
    """Offers the phase's tasks and waits until they are answered or the deadline passes."""
    co.open_phase(phase, sessions, json.dumps(site_config), task, timeout)
    try:
        await phase.wait(timeout)
    finally:
        co.close_phase(phase)


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
