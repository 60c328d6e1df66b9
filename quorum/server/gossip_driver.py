"""Gossip (decentralised) rounds: the server only coordinates (DESIGN section 5).

Each round takes the connected sites of the run's task in a stable order (by site name, which
gives their indices), draws the round's mixing with `quorum.aggregation.gossip.mixing`, and runs
one `GossipRound` (keys, sealed models through the relay, mixing at the sites). There is no
global model: the server serves only the run's public initial model (a site without a model of
its own starts from it) and never holds a site's model in the clear. A round is one row in the
store as in sync runs, with the sites' reports as its participations and its metrics:

- `evaluate`: each site evaluates its mixed model on its own test data; `accuracy_mean_sites`
  and `loss_mean_sites` are the unweighted means over sites (as for sync runs), `accuracy` and
  `loss` the example-weighted ones.
- `fit`: the sites' mean training loss.
- `gossip`: `consensus_distance`, the mean over the exchanged pairs of the L2 distance between
  a site's trained model and its neighbour's; `max_distance`; `num_sites`, `reported`,
  `mixed_pairs`, `skipped_pairs`; `consensus_distance_cycle`, the same over the last cycle of
  the topology (see `_add_cycle_distance`).
- `site_accuracy`: each reporting site's accuracy after mixing, by site name (so the rounds
  list shows every site's curve without reading each round's participations).

A round with fewer than `min_fit_sites` reports is aborted and run again; the sites keep each
round's model under its number, so an attempt starts from the same models as the one before.
A server restarted mid-run records the interrupted round as aborted and runs it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

import numpy as np

from quorum.aggregation import gossip
from quorum.errors import ConfigError
from quorum.fitconfig import FitConfig
from quorum.server.gossip_relay import GossipRound, check_cohort
from quorum.server.phases import Phase, RoundAborted
from quorum.server.records import RunRecord
from quorum.server.rounds import play_rounds, task_sites, wait_for_sites
from quorum.server.services import RoundServices
from quorum.task import load_task
from quorum.wire.blobfiles import BlobFile

log = logging.getLogger("quorum.server")


class GossipDriver:
    def __init__(self, services: RoundServices, record: RunRecord) -> None:
        self.services = services
        self.store = services.store
        self.run_id = record.id
        self.config = record.checked_config

    async def run(self) -> None:
        cfg = self.config
        done = self.store.last_completed_round(self.run_id)
        if self.store.abort_interrupted_rounds(self.run_id, "the server stopped during the round"):
            log.warning("event=round_recovered run_id=%s resume_after=%d", self.run_id, done)
        if not self.services.checkpoints.exists(self.run_id, 0):
            initial = load_task(cfg.task).initial_parameters(cfg.seed)
            staged = self.services.checkpoints.stage_params(self.run_id, 0, initial)
            self.services.checkpoints.save(self.run_id, 0, staged, {})
        # The initial model is public (every site could compute it); it is the only model the
        # server ever holds.
        model, _ = self.services.checkpoints.open(self.run_id, 0)
        self.store.set_run_status(self.run_id, "running")
        log.info("event=run_started run_id=%s mode=gossip from_round=%d", self.run_id, done + 1)

        async def play(round_no: int, attempt: int) -> None:
            await self._round(round_no, attempt, model)

        await play_rounds(self.services, self.run_id, done + 1, cfg.rounds, play)

    async def _round(self, round_no: int, attempt: int, model: BlobFile) -> None:
        cfg = self.config
        await wait_for_sites(
            self.services, self.run_id, cfg.task, cfg.min_available_sites, cfg.wait_timeout_s
        )
        cohort = task_sites(self.services, cfg.task)
        check_cohort([s.site for s in cohort], cfg.min_fit_sites)
        try:
            mixing = gossip.mixing(
                cfg.topology, len(cohort), round_no, degree=cfg.degree, seed=cfg.seed
            )
        except ConfigError as exc:
            raise RoundAborted(f"no {cfg.topology} mixing for {len(cohort)} sites: {exc}") from None
        # Hashed in a worker thread the first time: the event loop serves every session.
        _, blake3 = await asyncio.to_thread(lambda: (model.digest, model.blake3))
        phase = Phase(
            kind="fit",
            run_id=self.run_id,
            round=round_no,
            attempt=attempt,
            model_digest=self.services.blobs.put(model),
            model_blake3=blake3,
            model_size=len(model),
            layout=model.layout,
            max_num_examples=cfg.max_num_examples,
        )
        relay = GossipRound(self.services, phase, cohort, cfg, mixing)
        fit_config = FitConfig.for_fit(
            {**cfg.site_config, **self._decayed_lr(round_no)},
            round_no=round_no,
            seed=cfg.seed,
            run_id=self.run_id,
            rounds=cfg.rounds,
        )
        await relay.run(fit_config, cfg.task)
        reported = len(relay.reports)
        if reported < cfg.min_fit_sites:
            raise RoundAborted(
                f"{reported} site(s) of {len(cohort)} mixed and reported; min_fit_sites is "
                f"{cfg.min_fit_sites}"
            )
        metrics = round_metrics(relay)
        self._add_cycle_distance(round_no, len(cohort), metrics["gossip"])
        # No global model: the round's digest names the public initial model the sites started
        # from, the only model the server holds.
        self.store.complete_round(self.run_id, round_no, attempt, phase.model_digest, metrics)
        log.info(
            "event=round_completed run_id=%s round=%d reported=%d metrics=%s",
            self.run_id,
            round_no,
            reported,
            json.dumps({**metrics["evaluate"], **metrics["gossip"]}),
        )

    def _decayed_lr(self, round_no: int) -> dict[str, float]:
        lr = self.config.site_config.get("lr")
        decay = self.config.gossip_lr_decay
        if decay == 1.0 or not isinstance(lr, int | float):
            return {}
        return {"lr": float(lr) * decay ** (round_no - 1)}

    def _add_cycle_distance(self, round_no: int, n: int, gossip_metrics: dict[str, float]) -> None:
        """`consensus_distance_cycle`: the mean neighbour distance over the pairs of the last
        cycle of the topology (⌈log2 n⌉ rounds on the one-peer exponential graph, whose rounds
        each pair sites at one distance only and so alternate between closer and farther pairs;
        the round itself on the other topologies), comparable from round to round."""
        if "consensus_distance" not in gossip_metrics:
            return
        window = max(1, math.ceil(math.log2(n))) if self.config.topology == "exponential" else 1
        total = gossip_metrics["consensus_distance"] * gossip_metrics["mixed_pairs"]
        pairs = gossip_metrics["mixed_pairs"]
        for r, _, earlier in self.store.phase_metrics(self.run_id, "gossip"):
            if round_no - window < r < round_no and "consensus_distance" in earlier:
                total += earlier["consensus_distance"] * earlier["mixed_pairs"]
                pairs += earlier["mixed_pairs"]
        gossip_metrics["consensus_distance_cycle"] = total / pairs if pairs else 0.0


def round_metrics(relay: GossipRound) -> dict[str, dict[str, float]]:
    """The round's metrics from the sites' reports (see the module docstring)."""
    evaluated: list[tuple[dict[str, float], int]] = []
    distances: list[float] = []
    skipped = 0
    by_site: dict[str, float] = {}
    for i, report in sorted(relay.reports.items()):
        metrics = json.loads(report.metrics_json or "{}")
        if "accuracy" in metrics:
            by_site[relay.names[i]] = float(metrics["accuracy"])
        evaluated.append((metrics, int(report.num_examples)))
        distances.extend(d.distance for d in report.distances)
        skipped += len(report.skipped)
    out: dict[str, dict[str, float]] = {
        "evaluate": {"num_sites": float(len(evaluated))},
        "fit": {"num_sites": float(len(evaluated))},
        "gossip": {
            "num_sites": float(len(relay.cohort)),
            "reported": float(len(relay.reports)),
            "mixed_pairs": float(len(distances)),
            "skipped_pairs": float(skipped),
        },
    }
    if by_site:
        out["site_accuracy"] = by_site
    for name in ("accuracy", "loss"):
        pairs = [(m[name], n) for m, n in evaluated if name in m]
        if pairs:
            out["evaluate"][f"{name}_mean_sites"] = float(np.mean([v for v, _ in pairs]))
            total = sum(n for _, n in pairs)
            if total > 0:
                out["evaluate"][name] = sum(v * n for v, n in pairs) / total
    fit = [(m["fit_loss"], m.get("fit_num_examples", 1.0)) for m, _ in evaluated if "fit_loss" in m]
    if fit:
        examples = float(sum(n for _, n in fit))
        out["fit"]["loss"] = sum(v * n for v, n in fit) / examples if examples else fit[0][0]
        out["fit"]["num_examples"] = examples
    if distances:
        out["gossip"]["consensus_distance"] = float(np.mean(distances))
        out["gossip"]["max_distance"] = float(np.max(distances))
    return out
