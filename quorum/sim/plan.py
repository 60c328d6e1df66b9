"""Which sites a simulation has, what data each holds, and which host runs it.

Sites come from `[[sites]]` (each with its own data string), from `[sim] num_sites` with a data
string per site (`site_data`, `{index}` replaced by the site's number), or from a partition of
one data set (`[sim.partition]` over the task's `examples(sim.data)`); a `[[sites]]` entry
named like a generated site (`site-0007`) overrides that site's data or DP budget. `[sim]
byzantine` makes some of them hostile (`quorum.sim.attacks`).
"""

from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass, replace

import numpy as np

from quorum.config import SimFile, SiteDPConfig, resolve_data
from quorum.errors import ConfigError
from quorum.sim import partition
from quorum.sim.attacks import Attack, LabelPoisonable, assign
from quorum.task import FederatedTask, Partitionable


@dataclass(frozen=True)
class PlannedSite:
    name: str
    data: str | None
    part: int | None
    dp: SiteDPConfig | None
    owner: str | None = None
    """The data's own owner of a natural partition's site (a speaker, a writer)."""
    attack: Attack | None = None
    """What the site does if it is hostile (`[sim] byzantine`)."""
    flower_app: str | None = None
    """The Flower ClientApp that serves the site (`quorum.client.flower`), if any."""


@dataclass(frozen=True, eq=False)
class SitePlan:
    sites: list[PlannedSite]
    parts: list[np.ndarray] | None = None
    labels: np.ndarray | None = None


def site_name(index: int, count: int) -> str:
    """site-0000 ... site-0999: zero-padded so that names sort as numbers do."""
    return f"site-{index:0{max(4, len(str(count - 1)))}d}"


def plan(sim: SimFile, task: FederatedTask, config_dir: pathlib.Path) -> SitePlan:
    options = sim.sim
    parts: list[np.ndarray] | None = None
    labels: np.ndarray | None = None
    generated: list[PlannedSite] = []
    if options.partition is not None:
        assert options.data is not None  # SimOptions checks it
        if not isinstance(task, Partitionable):
            raise ConfigError(
                f"[sim.partition] needs a task that exposes its data: {sim.run.task!r} has no "
                "examples(data) and site_of(data, indices, device, seed) "
                "(quorum.task.Partitionable)"
            )
        examples = task.examples(options.data)
        spec = options.partition
        parts = partition.split(
            spec.kind,
            examples.labels,
            options.num_sites,
            spec.seed if spec.seed is not None else sim.run.seed,
            alpha=spec.alpha,
            shards_per_site=spec.shards_per_site,
            power=spec.power,
            min_size=spec.min_size,
            owners=examples.owners,
        )
        owners: list[str | None] = (
            list(partition.owner_names(examples.owners))
            if spec.kind == "natural" and examples.owners is not None
            else [None] * len(parts)
        )
        labels = examples.labels
        generated = [
            PlannedSite(site_name(i, len(parts)), None, i, None, owners[i])
            for i in range(len(parts))
        ]
    elif options.num_sites is not None:
        template = options.site_data
        generated = [
            PlannedSite(
                site_name(i, options.num_sites),
                template.replace("{index}", str(i)) if template is not None else None,
                None,
                None,
            )
            for i in range(options.num_sites)
        ]
    sites = {s.name: s for s in generated}
    for entry in sim.sites:
        data = resolve_data(entry.data, config_dir) if entry.data is not None else None
        known = sites.get(entry.name)
        if known is None:
            if data is None:
                raise ConfigError(f"[[sites]] {entry.name!r} needs its data")
            sites[entry.name] = PlannedSite(
                entry.name, data, None, entry.dp, flower_app=entry.flower_app
            )
        else:
            # A listed data string replaces the generated site's part or string.
            sites[entry.name] = replace(
                known,
                data=data if data is not None else known.data,
                part=None if data is not None else known.part,
                dp=entry.dp,
                flower_app=entry.flower_app,
            )
    missing = [s.name for s in sites.values() if s.data is None and s.part is None]
    if missing:
        raise ConfigError(
            f"{len(missing)} generated site(s) have no data (first: {missing[0]}): give "
            "sim.site_data (a data string per site, '{index}' replaced by its number) or "
            "[sim.partition] (a split of sim.data)"
        )
    default_dp = sim.site.dp
    attacks = assign(sim.sim.byzantine, list(sites), sim.run.seed)
    poisoned = [name for name, a in attacks.items() if a.name == "labelflip"]
    if poisoned and not isinstance(task, LabelPoisonable):
        raise ConfigError(
            f"labelflip poisons a site's labels, which task {sim.run.task!r} cannot do: it "
            "needs poisoned_site_of(data, indices, device, seed, relabel) "
            "(quorum.sim.attacks.LabelPoisonable; the MNIST example has it)"
        )
    unsplit = [name for name in poisoned if sites[name].part is None]
    if unsplit:
        raise ConfigError(
            f"labelflip poisons a site's part of [sim.partition]; {unsplit[0]} has its own data"
        )
    return SitePlan(
        [replace(s, dp=s.dp or default_dp, attack=attacks.get(s.name)) for s in sites.values()],
        parts,
        labels,
    )


@dataclass(frozen=True)
class HostLayout:
    hosts: int
    slots: int
    keep: int


def layout(sim: SimFile, num_sites: int, cpus: int | None = None) -> HostLayout:
    """Host processes (default: one per core, at most one per site), fit slots per host
    (default: its share of the cores) and SiteTasks kept built per host."""
    cores = cpus or os.cpu_count() or 1
    hosts = min(sim.sim.hosts or cores, num_sites)
    slots = sim.sim.slots_per_host or max(1, cores // hosts)
    # Enough built tasks that the sites of a small federation are built once; a large one
    # rebuilds a site's task (a model and an index array) when its turn comes again.
    keep = max(4 * slots, min(16, math.ceil(num_sites / hosts)))
    return HostLayout(hosts, slots, keep)


def deal(sites: list[PlannedSite], hosts: int) -> list[list[PlannedSite]]:
    """Round-robin, so that a cohort drawn at random spreads over every host."""
    return [sites[k::hosts] for k in range(hosts)]
