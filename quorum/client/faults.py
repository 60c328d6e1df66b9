"""Fault injection for demonstrations and tests: a site agent that dies at a chosen round and
stage (`quorum client run --crash-at 3:masked-input`, `quorum sim --kill-site name@3:unmask`),
and a site slower than the others (`--slowdown 5`, `quorum sim --slow-site name=5`)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from quorum.client.agent import SimulatedCrash, StageHook
from quorum.errors import ConfigError
from quorum.task import EvalResult, FitResult, JSONConfig, SiteTask
from quorum.wire.blobs import Params

STAGES = (
    "fit",
    "advertise-keys",
    "share-keys",
    "masked-input",
    "unmask",
    "gossip-keys",
    "gossip-send",
    "gossip-mix",
)
"""`fit`: as a fit task starts; the rest: as the SecAgg stage of that name starts at the site
(`unmask` is after its masked vector was accepted), or the gossip stage of that name
(`gossip-send` after training, `gossip-mix` once its ciphertexts are uploaded)."""


@dataclass(frozen=True)
class Crash:
    round: int
    stage: str

    @classmethod
    def parse(cls, text: str) -> Crash:
        """ROUND:STAGE, e.g. `3:masked-input`."""
        round_text, sep, stage = text.partition(":")
        if not sep or not round_text.isdigit() or int(round_text) < 1 or stage not in STAGES:
            raise ConfigError(
                f"crash point {text!r} is not ROUND:STAGE with a round >= 1 and a stage among "
                f"{', '.join(STAGES)}"
            )
        return cls(int(round_text), stage)

    def __str__(self) -> str:
        return f"{self.round}:{self.stage}"


def parse_kill(text: str) -> tuple[str, Crash]:
    """SITE@ROUND:STAGE, e.g. `hungarian@3:masked-input`."""
    site, sep, point = text.partition("@")
    if not sep or not site:
        raise ConfigError(f"--kill-site {text!r} is not SITE@ROUND:STAGE")
    return site, Crash.parse(point)


def kill_hook(crash: Crash) -> StageHook:
    """A stage hook that SIGKILLs this process at the crash point (the first time it begins
    the stage in that round or a later one: an async site may never be offered a given round):
    no goodbye reaches the server, exactly as when a machine loses power."""

    def hook(round_no: int, stage: str) -> None:
        if stage == crash.stage and round_no >= crash.round:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def crash_hook(crash: Crash) -> StageHook:
    """The same crash point for a virtual site of a simulation host: the site vanishes
    (`SimulatedCrash`: its session ends without an answer or a goodbye) and its neighbours in
    the host process go on."""

    def hook(round_no: int, stage: str) -> None:
        if stage == crash.stage and round_no >= crash.round:
            raise SimulatedCrash(f"crash point {crash}")

    return hook


class Slowed:
    """A site that trains `factor` times slower, as on a slower machine: after each fit it waits
    (factor - 1) times as long as the fit took, so every local step costs `factor` times its
    time on this machine. Evaluation is not slowed."""

    def __init__(self, inner: SiteTask, factor: float) -> None:
        if not factor >= 1:
            raise ConfigError(f"a slowdown factor is at least 1, got {factor}")
        self.inner = inner
        self.factor = factor

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        started = time.monotonic()
        result = self.inner.fit(params, config)
        time.sleep((self.factor - 1) * (time.monotonic() - started))
        return result

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        return self.inner.evaluate(params, config)


def parse_slowdown(text: str) -> tuple[str, float]:
    """SITE=FACTOR, e.g. `cleveland=5`."""
    site, sep, factor = text.partition("=")
    try:
        value = float(factor)
    except ValueError:
        value = float("nan")
    if not sep or not site or not value >= 1:
        raise ConfigError(f"--slow-site {text!r} is not SITE=FACTOR with a factor >= 1")
    return site, value
