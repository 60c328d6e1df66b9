"""The site agent's reconnect loop: a session that lasted starts the next outage from the base
delay, and `give_up_after_s` ends the agent when its time is up, not a backoff later."""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

import pytest

from quorum.client import agent as agent_module
from quorum.client.agent import Backoff, SiteAgent
from quorum.errors import QuorumError
from quorum.identity import generate


class Recording(Backoff):
    """Asks for `delay_s` after every session; records the failure counts it was asked with."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        object.__setattr__(self, "delay_s", delay_s)
        object.__setattr__(self, "asked", [])

    def delay(self, failures: int, rng: random.Random) -> float:
        self.asked.append(failures)  # type: ignore[attr-defined]
        return float(self.delay_s)  # type: ignore[attr-defined]


def agent(backoff: Backoff, give_up_after_s: float | None = None) -> SiteAgent:
    site_task: object = None  # never asked to train: no session gets that far
    return SiteAgent(
        "127.0.0.1:1",
        generate(),
        "t:t",
        site_task,  # type: ignore[arg-type]
        backoff=backoff,
        give_up_after_s=give_up_after_s,
    )


def test_only_a_session_that_lasted_resets_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sessions welcomed and dropped at once (two agents on one key kicking each other off)
    # back off as failures do; one that lasted starts the next outage from the base delay.
    backoff = Recording(0.0)
    site = agent(backoff)
    stop = asyncio.Event()
    clock = [0.0]
    # The agent's clock only (asyncio keeps the real one).
    monkeypatch.setattr(agent_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    lasted = {4}  # the fourth session lasts a minute
    sessions = 0

    async def session(_stop: asyncio.Event) -> None:
        nonlocal sessions
        sessions += 1
        site._joined = True
        clock[0] += 60.0 if sessions in lasted else 0.1
        if sessions == 6:
            stop.set()
            return
        raise ConnectionError("the server closed the session")

    site._session = session  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(site.run(stop), 30))
    assert backoff.asked == [0, 1, 2, 0, 1, 2]  # type: ignore[attr-defined]


def test_the_agent_gives_up_when_its_time_is_up_not_a_backoff_later() -> None:
    site = agent(Recording(60.0), give_up_after_s=0.5)  # the backoff alone would wait a minute
    attempts: list[float] = []

    async def session(_stop: asyncio.Event) -> None:
        attempts.append(time.monotonic())
        raise ConnectionError("connection refused")

    site._session = session  # type: ignore[method-assign]
    began = time.monotonic()
    with pytest.raises(QuorumError, match=r"no session with 127\.0\.0\.1:1 for 0\.5 s, giving up"):
        asyncio.run(asyncio.wait_for(site.run(), 30))
    # one try at the start, one more as the time runs out, none after
    assert len(attempts) == 2
    assert attempts[1] - began >= 0.5
