"""A site across its sessions: a session that ends while a fit trains leaves the fit's thread
running (a thread cannot be stopped), and the next session's task waits for it. Two fits of one
site side by side would train one model object, hold its memory twice, and spend its privacy
budget twice over a check that saw neither."""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from typing import Any

import numpy as np
import pytest

from quorum import torch_task
from quorum.client.privacy import enable_site_dp
from quorum.config import SiteDPConfig
from quorum.privacy.dp import DPSettings, PrivacyLedger
from quorum.task import EvalResult, FitResult, load_task
from quorum.wire import blobs
from tests.integration.harness import federation, run_config, wait_for

HEART = "examples.heart_disease.task:task"


class Counting:
    """A site whose fits take a while, counting how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.fits = 0
        self.started = threading.Event()

    def fit(self, params: blobs.Params, config: Any) -> FitResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.set()
        time.sleep(1.5)
        with self.lock:
            self.running -= 1
            self.fits += 1
        return FitResult({k: v + np.float32(1) for k, v in params.items()}, 1, {})

    def evaluate(self, params: blobs.Params, config: Any) -> EvalResult:
        return EvalResult(1, {"accuracy": 0.5})


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_session_dropped_mid_fit_never_lets_two_fits_run_at_once(
    tmp_path: pathlib.Path, mode: str
) -> None:
    site = Counting()
    extra: dict[str, Any] = {"mode": "async", "buffer_size": 1, "max_staleness": 10}

    async def scenario() -> None:
        cfg = run_config(
            rounds=2,
            min_fit_sites=1,
            min_available_sites=1,
            round_timeout_s=60,
            **(extra if mode == "async" else {}),
        )
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "", site_task=site)
            assert await asyncio.to_thread(site.started.wait, 30)
            for session in fed.services.sessions.connected():
                session.close()  # the network drops the site's session as it trains
            await fed.wait_run(timeout=60)

    asyncio.run(scenario())
    assert site.fits >= 3  # the dropped session's fit, then the run's two rounds
    assert site.most == 1


def test_a_session_dropped_mid_fit_never_lets_the_site_spend_past_its_budget(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_training = threading.Event()
    train_dp = torch_task.train_dp

    def slow(*args: Any, **kwargs: Any) -> Any:
        in_training.set()
        time.sleep(1.5)  # the session drops meanwhile
        return train_dp(*args, **kwargs)

    monkeypatch.setattr(torch_task, "train_dp", slow)
    heart = load_task(HEART)
    ledger_path = tmp_path / "cleveland.privacy.json"
    settings = DPSettings(epsilon=1.0, delta=1e-5)
    config = run_config(
        task=HEART,
        rounds=1,
        min_fit_sites=1,
        min_available_sites=1,
        fraction_evaluate=0.0,
        round_timeout_s=60,
        site_config={"local_steps": 5, "batch_size": 8, "lr": 0.01},
    )
    run_id = ""

    async def scenario() -> None:
        nonlocal run_id
        async with federation(tmp_path, [config]) as fed:
            runs = await wait_for(lambda: fed.api("/api/v1/runs"), 10)
            run_id = runs[0]["id"]
            ledger = PrivacyLedger(ledger_path, settings)
            ledger.plan(run_id, 8 / 200, 10)
            ledger.record(run_id, 5)  # room left for exactly one fit of 5 steps
            site_task = heart.site("cleveland", "cpu", 0)
            enable_site_dp(site_task, SiteDPConfig(epsilon=1.0, delta=1e-5), ledger_path)
            fed.add_site("cleveland", "cleveland", site_task=site_task, task_ref=HEART)
            assert await asyncio.to_thread(in_training.wait, 60)
            for session in fed.services.sessions.connected():
                session.close()

            async def ended() -> dict[str, Any] | None:
                run: dict[str, Any] = (await fed.api("/api/v1/runs"))[0]
                return run if run["status"] in ("completed", "failed") else None

            await wait_for(ended, 120)

    asyncio.run(scenario())
    # The dropped session's fit spent the budget's last room (its update was never sent);
    # every later fit of the run was refused by the site, none ran beside it.
    after = PrivacyLedger(ledger_path, settings)
    assert after.spent(run_id) <= 1.0
    assert sum(steps for _, _, steps in after._runs[run_id].history) == 10
