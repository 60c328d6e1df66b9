"""A site host: one process that runs many virtual sites of a simulation.

Each virtual site is a real `SiteAgent` with its own identity key, its own session with the
server, its own privacy ledger and its own SecAgg and gossip secrets: to the server it is a site
like any other. What the sites of a host share is what a process loads once: the task module,
torch, the data set (a site keeps only its indices into it), one HTTP/2 connection (each session
is a stream of it), one cache of downloaded models and a bounded number of fit slots. A site's
`SiteTask` is built when the site is first asked to train or evaluate, and at most `keep` of them
stay built (least recently used first out), so a dormant site costs its key, its indices and its
session: kilobytes.

`quorum sim` starts hosts as processes (`quorum sim-host --spec FILE`) or as Ray actors; the
spec, written by the simulator, is JSON (it holds the sites' private keys: mode 0600).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import resource
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from quorum.client.agent import SimulatedCrash, SiteAgent
from quorum.client.compression import Residuals
from quorum.client.faults import Crash, Slowed, crash_hook
from quorum.client.gossip_models import GossipModels
from quorum.client.privacy import enable_site_dp
from quorum.client.slots import Slots
from quorum.client.transfer import BlobCache
from quorum.config import SiteDPConfig
from quorum.errors import ConfigError
from quorum.sim import partition
from quorum.sim.attacks import Attack, Attacked, Colluders, LabelPoisonable, flipped_labels
from quorum.task import (
    EvalResult,
    FederatedTask,
    FitResult,
    JSONConfig,
    Partitionable,
    SiteTask,
    load_task,
)
from quorum.wire.blobs import Params
from quorum.wire.channel import GRPC_OPTIONS

log = logging.getLogger("quorum.sim.host")

HOST_CACHED_BLOBS = 4
"""Models a host keeps: the current one and a few before it (async sites train on older
versions)."""


class HostSite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    key: str = Field(description="the raw Ed25519 private key, hex")
    data: str | None = Field(None, description="the site's data string (task.site)")
    part: int | None = Field(None, ge=0, description="its part of the partition (task.site_of)")
    dp: SiteDPConfig | None = None
    crash: str | None = Field(None, description="ROUND:STAGE at which the site vanishes")
    slowdown: float | None = None
    attack: str | None = Field(None, description="ATTACK[:PARAM]: a hostile site (sim.attacks)")
    flower_app: str | None = Field(None, description="a Flower ClientApp serving the site")


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: int
    server: str
    task: str
    device: str
    seed: int
    slots: int = Field(ge=1)
    keep: int = Field(ge=1, description="SiteTasks kept built at once")
    data: str | None = Field(None, description="the data set the partition splits")
    partition: pathlib.Path | None = None
    site_dir: pathlib.Path = Field(description="privacy ledgers and gossip models, per site")
    sites: list[HostSite]


class BuiltSites:
    """The SiteTasks built most recently, at most `keep`; fits run in threads, hence the lock."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._built: OrderedDict[str, SiteTask] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, build: Callable[[], SiteTask]) -> SiteTask:
        with self._lock:
            task = self._built.get(name)
            if task is not None:
                self._built.move_to_end(name)
                return task
        task = build()  # outside the lock: other sites' fits go on meanwhile
        with self._lock:
            self._built[name] = task
            while len(self._built) > self._keep:
                self._built.popitem(last=False)
        return task

    def __len__(self) -> int:
        return len(self._built)


class VirtualSite:
    """A SiteTask built on first use and kept in the host's `BuiltSites`; a site's task runs
    one fit or evaluation at a time (its agent's tasks are sequential), so a rebuilt task never
    overlaps one still running for the same site."""

    def __init__(self, name: str, build: Callable[[], SiteTask], built: BuiltSites) -> None:
        self.name = name
        self._build = build
        self._built = built

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        return self._built.get(self.name, self._build).fit(params, config)

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        return self._built.get(self.name, self._build).evaluate(params, config)


def builder(
    spec: HostSpec,
    site: HostSite,
    task: FederatedTask,
    parts: Sequence[np.ndarray] | None,
    colluders: Colluders,
) -> Callable[[], SiteTask]:
    """How the site's SiteTask is made: from its part of the partition or its data string,
    with its own DP ledger, its attack if it is hostile, and its slowdown."""
    attack = Attack.parse(site.attack) if site.attack is not None else None

    def build() -> SiteTask:
        built: SiteTask
        if site.flower_app is not None:
            from quorum.client.flower import FlowerSite, load_flower_app

            initial = task.initial_parameters(spec.seed)
            built = FlowerSite(load_flower_app(site.flower_app), initial, site.data or "")
        elif site.part is not None:
            if parts is None or spec.data is None:
                raise ConfigError(f"site {site.name} has a part but the host has no partition")
            if not isinstance(task, Partitionable):
                raise ConfigError(f"task {spec.task!r} is not Partitionable")
            indices = parts[site.part]
            if attack is not None and attack.name == "labelflip":
                if not isinstance(task, LabelPoisonable):
                    raise ConfigError(f"task {spec.task!r} cannot be poisoned (labelflip)")
                relabel = flipped_labels(task.examples(spec.data).labels)
                built = task.poisoned_site_of(spec.data, indices, spec.device, spec.seed, relabel)
            else:
                built = task.site_of(spec.data, indices, spec.device, spec.seed)
        elif site.data is not None:
            built = task.site(site.data, spec.device, spec.seed)
        else:
            raise ConfigError(f"site {site.name} has neither data nor a part of a partition")
        if site.dp is not None:
            enable_site_dp(built, site.dp, spec.site_dir / f"{site.name}.privacy.json")
        if attack is not None and attack.name != "labelflip":
            built = Attacked(built, attack, site.name, spec.seed, colluders)
        if site.slowdown is not None:
            built = Slowed(built, site.slowdown)
        return built

    return build


async def serve(spec: HostSpec, stop: asyncio.Event) -> dict[str, object]:
    """Runs the host's sites until `stop` is set; returns what the host did (its sites, those
    that crashed on purpose, those whose agent failed)."""
    task = load_task(spec.task)
    parts = partition.load(spec.partition) if spec.partition is not None else None
    built = BuiltSites(spec.keep)
    slots = Slots(spec.slots)
    # One cache of models for the host, as blobs are content-addressed: a round's cohort
    # shares the bytes of its model, and a site that trained once keeps no copy of its own.
    cache = BlobCache(keep=HOST_CACHED_BLOBS)
    colluders = Colluders()  # the host's alie sites pool their honest updates
    crashed: list[str] = []
    failed: dict[str, str] = {}
    async with grpc.aio.insecure_channel(spec.server, options=GRPC_OPTIONS) as channel:

        async def run_site(site: HostSite) -> None:
            agent = SiteAgent(
                spec.server,
                Ed25519PrivateKey.from_private_bytes(bytes.fromhex(site.key)),
                spec.task,
                VirtualSite(site.name, builder(spec, site, task, parts, colluders), built),
                cache=cache,
                channel=channel,
                slots=slots,
                name=site.name,
                on_stage=crash_hook(Crash.parse(site.crash)) if site.crash else None,
                gossip_models=GossipModels(spec.site_dir / site.name / "gossip"),
                residuals=Residuals(spec.site_dir / site.name / "residuals"),
            )
            try:
                await agent.run(stop)
            except SimulatedCrash:
                crashed.append(site.name)
                log.warning("event=site_crashed site=%s (fault injection)", site.name)
            except Exception as exc:  # one site's agent failing must not end its neighbours
                failed[site.name] = f"{type(exc).__name__}: {exc}"
                log.exception("event=site_agent_failed site=%s", site.name)

        log.info(
            "event=host_started host=%d sites=%d slots=%d", spec.host, len(spec.sites), spec.slots
        )
        await asyncio.gather(*(run_site(site) for site in spec.sites))
    return {
        "host": spec.host,
        "sites": [s.name for s in spec.sites],
        "crashed": crashed,
        "failed": failed,
        "built_at_end": len(built),
        # ru_maxrss is in KiB on Linux: the host's own peak, for the memory per site it holds.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def read_spec(path: pathlib.Path) -> HostSpec:
    try:
        return HostSpec.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read host spec {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"host spec {path} is not valid: {exc}") from None


def write_spec(spec: HostSpec, path: pathlib.Path) -> None:
    """Mode 0600 from the first byte: the spec holds the sites' private keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(spec.model_dump_json())
