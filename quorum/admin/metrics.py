"""Prometheus metrics (`GET /metrics`), read from what the server records at each scrape.

The counters are totals over the state store (rounds, participations, refusals, the privacy
ledger, baseline jobs), so they are right from the first scrape after a restart instead of
starting again at zero; the histograms are built from the recorded durations the same way.
A scrape reads the store in a worker thread on a connection of its own (Store.totals), so a
large state does not hold up the event loop.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from quorum.server.records import BASELINE_ACTIVE, BASELINE_FINAL
from quorum.server.store import Store

ROUND_SECONDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STAGE_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STALENESS = (0, 1, 2, 3, 4, 5, 8, 10, 16, 32, 64)


@dataclass(frozen=True)
class Live:
    """What lives in the event loop's memory, read there before a worker thread collects the
    rest from the store."""

    connected_sites: int
    event_streams: int


class QuorumCollector(Collector):
    def __init__(self, store: Store, live: Live) -> None:
        self._store = store
        self._live = live

    def collect(self) -> Iterator[Metric]:
        t = self._store.totals(STAGE_SECONDS)
        yield _gauge(
            "quorum_connected_sites",
            "Sites with an open session now.",
            [],
            [((), self._live.connected_sites)],
        )
        yield _gauge(
            "quorum_event_streams",
            "Clients following the live event stream now.",
            [],
            [((), self._live.event_streams)],
        )
        yield _gauge(
            "quorum_run_info",
            "1 for each run, with its name and status.",
            ["run_id", "name", "status"],
            [((run_id, name, status), 1) for run_id, name, status in t.runs],
        )
        attempts = {(run_id, status): n for run_id, status, n in t.rounds}
        for status in ("completed", "aborted"):
            yield _counter(  # every run has both, from 0: a query finds a run before its rounds
                f"quorum_rounds_{status}",
                f"Round attempts {status}, per run.",
                ["run_id"],
                [((run_id,), attempts.get((run_id, status), 0)) for run_id, _, _ in t.runs],
            )
        yield _histogram(
            "quorum_round_duration_seconds",
            "Wall time of finished round attempts (offer to completion or abort).",
            ["run_id", "status"],
            _observed(
                [((run_id, status), d, 1) for run_id, status, d in t.round_durations],
                ROUND_SECONDS,
            ),
            ROUND_SECONDS,
        )
        yield _histogram(
            "quorum_site_task_duration_seconds",
            "Time sites reported for their fit and evaluate tasks.",
            ["kind"],
            [((kind,), bucket, n, total) for kind, bucket, n, total in t.task_durations],
            STAGE_SECONDS,
        )
        stages = [s for report in t.secagg for s in report.get("stages", [])]
        yield _histogram(
            "quorum_secagg_stage_duration_seconds",
            "Duration of each secure-aggregation stage.",
            ["stage"],
            _observed([((s["stage"],), s["duration_s"], 1) for s in stages], STAGE_SECONDS),
            STAGE_SECONDS,
        )
        dropouts: dict[tuple[str, ...], float] = defaultdict(float)
        for s in stages:
            dropouts[(s["stage"],)] += len(s.get("dropped", []))
        yield _counter(
            "quorum_secagg_dropouts",
            "Sites that dropped out of secure aggregation, by the stage they missed.",
            ["stage"],
            dropouts.items(),
        )
        yield _counter(
            "quorum_received_bytes",
            "Bytes received from sites (uploads), per run.",
            ["run_id"],
            [((run_id,), bytes_in) for run_id, bytes_in, _ in t.traffic],
        )
        yield _counter(
            "quorum_sent_bytes",
            "Bytes sent to sites (models, task offers), per run.",
            ["run_id"],
            [((run_id,), bytes_out) for run_id, _, bytes_out in t.traffic],
        )
        yield _counter(
            "quorum_uploads_refused",
            "Uploads and messages the server refused, by reason.",
            ["reason"],
            [((code,), n) for code, n in t.refused],
        )
        yield _histogram(
            "quorum_async_staleness",
            "Staleness (model versions behind) of the updates async runs applied.",
            ["run_id"],
            _observed([((run_id,), s, n) for run_id, s, n in t.staleness], STALENESS),
            STALENESS,
        )
        yield _gauge(
            "quorum_site_epsilon",
            "Site-level DP: the ε each site last reported spent in the run.",
            ["run_id", "site"],
            [((run_id, site), e) for run_id, site, e in t.site_epsilon],
        )
        yield _gauge(
            "quorum_central_epsilon",
            "Central DP: the run's user-level ε so far.",
            ["run_id"],
            [((run_id,), e) for run_id, e in t.central_epsilon],
        )
        jobs = dict(t.baselines)
        yield _gauge(
            "quorum_baseline_jobs",
            "Centralised baseline jobs by state.",
            ["state"],
            [((s,), jobs.get(s, 0)) for s in (*BASELINE_ACTIVE, *BASELINE_FINAL)],
        )


def render(store: Store, live: Live) -> bytes:
    """The exposition text, from a registry of its own (several servers in one process, as in
    tests, must not share prometheus-client's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QuorumCollector(store, live))
    return generate_latest(registry)


def metrics_router(store: Store, live: Callable[[], Live], viewer: Any) -> APIRouter:
    """`GET /metrics` in Prometheus' text format, for a viewer token (Prometheus sends it with
    `authorization: {type: Bearer, credentials_file: ...}` in its scrape config)."""
    router = APIRouter()

    @router.get("/metrics", dependencies=[viewer], response_class=Response, tags=["metrics"])
    async def metrics() -> Response:
        text = await asyncio.to_thread(render, store, live())
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return router


Samples = Iterable[tuple[Sequence[str], float]]


def _gauge(name: str, doc: str, labels: list[str], samples: Samples) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _counter(name: str, doc: str, labels: list[str], samples: Samples) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


Bucketed = Iterable[tuple[tuple[str, ...], int, int, float]]
"""(label values, bucket index, observations, their sum)"""


def _observed(
    observations: Iterable[tuple[tuple[str, ...], float, int]], bounds: Sequence[float]
) -> Bucketed:
    """(label values, value, times seen) as bucketed rows."""
    return [
        (key, next((i for i, b in enumerate(bounds) if value <= b), len(bounds)), n, value * n)
        for key, value, n in observations
    ]


def _histogram(
    name: str, doc: str, labels: list[str], rows: Bucketed, bounds: Sequence[float]
) -> HistogramMetricFamily:
    counts: dict[tuple[str, ...], list[int]] = {}
    sums: dict[tuple[str, ...], float] = defaultdict(float)
    for key, index, n, total in rows:
        counts.setdefault(key, [0] * (len(bounds) + 1))[index] += n
        sums[key] += total
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, slots in counts.items():
        cumulative, buckets = 0, []
        for bound, n in zip([*(str(float(b)) for b in bounds), "+Inf"], slots, strict=True):
            cumulative += n
            buckets.append((bound, float(cumulative)))
        family.add_metric(list(key), buckets, sums[key])
    return family
