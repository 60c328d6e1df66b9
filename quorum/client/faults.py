"""Fault injection for demonstrations and tests: a site agent that dies at a chosen round and
stage (`quorum client run --crash-at 3:masked-input`, `quorum sim --kill-site name@3:unmask`)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from quorum.client.agent import StageHook
from quorum.errors import ConfigError

STAGES = ("fit", "advertise-keys", "share-keys", "masked-input", "unmask")
"""`fit`: as a fit task starts; the rest: as the SecAgg stage of that name starts at the site
(`unmask` is after its masked vector was accepted)."""


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
    """A stage hook that SIGKILLs this process at the crash point: no goodbye reaches the
    server, exactly as when a machine loses power."""

    def hook(round_no: int, stage: str) -> None:
        if (round_no, stage) == (crash.round, crash.stage):
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
