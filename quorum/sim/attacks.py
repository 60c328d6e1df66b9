"""Byzantine sites for `quorum sim` (`--byzantine SITE_OR_FRACTION=ATTACK[:PARAM]`, repeatable,
or `[sim] byzantine = [...]`): the attack runs at the site, in the site host, and the server is
the real one, unaware of it.

A hostile site trains as an honest one would, then alters what it sends. With Δ its honest
update (trained minus received model):

- `signflip[:λ]` sends received − λ·Δ (λ = 1: the update reversed).
- `scale[:λ]` sends received + λ·Δ (λ = 10 by default: a boosted update).
- `noise[:σ]` sends received + N(0, σ²) per value: its update is Gaussian noise (σ = 1).
- `labelflip` poisons the site's data instead: it trains on labels l -> C - 1 - l. Only tasks
  that can rebuild a site on relabelled data can be poisoned so
  (`LabelPoisonable`: the MNIST example); a partition (`[sim.partition]`) gives the data.
- `alie[:z]` "a little is enough" (Baruch et al. 2019): sends received + μ + z·σ, with μ and σ
  the per-value mean and standard deviation of the honest updates. The paper's colluding
  attackers know their own honest updates; here the hostile sites of one site host pool theirs
  (`Colluders`): a site uses the pool of its round, and the previous round's too while its round
  has fewer than two (its first fit of the run, alone, sends its honest update). The default z
  is the paper's z_max for n sites of which m hostile: s = ⌊n/2 + 1⌋ − m, z = Φ⁻¹((n − s)/n).

Every choice is seeded: which sites a fraction names (the run's seed) and each site's noise (the
seed, the site and the round).
"""

from __future__ import annotations

import math
import statistics
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from quorum.errors import ConfigError
from quorum.task import EvalResult, FitResult, JSONConfig, SiteTask
from quorum.wire.blobs import Params

DEFAULTS: dict[str, float | None] = {
    "signflip": 1.0,
    "scale": 10.0,
    "noise": 1.0,
    "labelflip": None,
    "alie": None,  # z_max of the simulation's n and m
}
ATTACKS = tuple(DEFAULTS)


@dataclass(frozen=True)
class Attack:
    name: str
    param: float | None = None

    def __str__(self) -> str:
        return self.name if self.param is None else f"{self.name}:{self.param:g}"

    @classmethod
    def parse(cls, text: str) -> Attack:
        name, sep, raw = text.strip().partition(":")
        if name not in DEFAULTS:
            raise ConfigError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS)}")
        if not sep:
            return cls(name, DEFAULTS[name])
        if name == "labelflip":
            raise ConfigError("labelflip takes no parameter")
        try:
            param = float(raw)
        except ValueError:
            raise ConfigError(f"attack {text!r}: {raw!r} is not a number") from None
        if not math.isfinite(param) or (name == "noise" and param <= 0):
            raise ConfigError(f"attack {text!r}: the parameter must be finite (σ positive)")
        return cls(name, param)


def alie_z(num_sites: int, num_hostile: int) -> float:
    """Baruch et al.'s z_max: the largest shift that keeps the hostile updates closer to the
    mean than enough honest ones for median- and Krum-like rules to accept them."""
    s = num_sites // 2 + 1 - num_hostile
    if not 0 < s < num_sites:
        raise ConfigError(
            f"alie's z_max is undefined for {num_sites} sites of which {num_hostile} hostile: "
            "give z (alie:Z)"
        )
    return statistics.NormalDist().inv_cdf((num_sites - s) / num_sites)


def assign(specs: Sequence[str], sites: Sequence[str], seed: int) -> dict[str, Attack]:
    """Which sites are hostile and how: `SITE=ATTACK` names one, `FRACTION=ATTACK` draws
    round(FRACTION · sites) among those not named yet (seeded)."""
    named: dict[str, Attack] = {}
    drawn: list[tuple[float, Attack]] = []
    for spec in specs:
        target, sep, attack_text = spec.partition("=")
        if not sep or not target.strip():
            raise ConfigError(
                f"byzantine spec {spec!r} is not SITE_OR_FRACTION=ATTACK[:PARAM] "
                "(e.g. 0.2=signflip or site-0007=scale:10)"
            )
        attack = Attack.parse(attack_text)
        target = target.strip()
        try:
            fraction = float(target)
        except ValueError:
            if target not in sites:
                raise ConfigError(f"byzantine spec {spec!r}: no site {target!r}") from None
            named[target] = attack
            continue
        if not 0 < fraction <= 1:
            raise ConfigError(f"byzantine spec {spec!r}: the fraction must lie in (0, 1]")
        drawn.append((fraction, attack))
    rng = np.random.default_rng(seed)
    result = dict(named)
    for fraction, attack in drawn:
        free = [s for s in sites if s not in result]
        count = round(fraction * len(sites))
        if count > len(free):
            raise ConfigError(
                f"byzantine fractions ask for more hostile sites than the {len(sites)} there are"
            )
        for index in sorted(rng.choice(len(free), size=count, replace=False)):
            result[free[int(index)]] = attack
    if any(a.name == "alie" and a.param is None for a in result.values()):
        z = alie_z(len(sites), len(result))
        result = {
            s: Attack("alie", z) if a.name == "alie" and a.param is None else a
            for s, a in result.items()
        }
    return dict(sorted(result.items()))


@runtime_checkable
class LabelPoisonable(Protocol):
    """A Partitionable task that can build a site whose labels are mapped by `relabel`
    (label l becomes relabel[l]): what `labelflip` needs."""

    def poisoned_site_of(
        self, data: str, indices: np.ndarray, device: str, seed: int, relabel: np.ndarray
    ) -> SiteTask: ...


def flipped_labels(labels: np.ndarray) -> np.ndarray:
    """l -> C - 1 - l over the C classes of `labels`."""
    classes = int(labels.max()) + 1
    flipped: np.ndarray = np.arange(classes)[::-1].copy()
    return flipped


class Colluders:
    """The honest updates of a host's `alie` sites, by round (this round's and the last
    one's), shared by their fits (threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rounds: dict[int, list[Params]] = {}

    def share(self, round_no: int, delta: Params) -> list[Params]:
        """Adds `delta`; returns the pool to take statistics from."""
        with self._lock:
            self._rounds.setdefault(round_no, []).append(delta)
            for old in [r for r in self._rounds if r < round_no - 1]:
                del self._rounds[old]
            pool = list(self._rounds[round_no])
            if len(pool) < 2:
                pool += self._rounds.get(round_no - 1, [])
            return pool


class Attacked:
    """A hostile site's SiteTask: trains honestly, then sends what its attack says."""

    def __init__(
        self, inner: SiteTask, attack: Attack, site: str, seed: int, colluders: Colluders
    ) -> None:
        if attack.name == "labelflip":
            raise ConfigError("labelflip poisons the data, not the update")
        self.inner = inner
        self.attack = attack
        self.site = site
        self.seed = seed
        self.colluders = colluders

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        result = self.inner.fit(params, config)
        round_no = int(config.get("round", 0))
        delta = {k: v.astype(np.float64) - params[k] for k, v in result.params.items()}
        lam = self.attack.param if self.attack.param is not None else 0.0
        name = self.attack.name
        if name == "signflip":
            sent = {k: -lam * d for k, d in delta.items()}
        elif name == "scale":
            sent = {k: lam * d for k, d in delta.items()}
        elif name == "noise":
            rng = np.random.default_rng([self.seed, zlib.crc32(self.site.encode()), round_no])
            sent = {k: rng.normal(0.0, lam, size=d.shape) for k, d in delta.items()}
        else:  # alie
            pool = self.colluders.share(round_no, delta)
            sent = {
                k: np.mean([p[k] for p in pool], axis=0)
                + lam * np.std([p[k] for p in pool], axis=0)
                for k in delta
            }
        out = {k: (params[k] + sent[k]).astype(v.dtype) for k, v in result.params.items()}
        return FitResult(out, result.num_examples, result.metrics)

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        return self.inner.evaluate(params, config)
