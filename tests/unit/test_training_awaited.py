"""`stages.training_awaited`: a multi-stage task waits for its fit however its stages end, and
logs the fit's error once, only where it is not the one the stages raised."""

from __future__ import annotations

import asyncio
import logging

import pytest

from quorum.client.stages import training_awaited

log = logging.getLogger("quorum.client")


async def _failing(exc: BaseException, hold: asyncio.Event) -> None:
    await hold.wait()
    raise exc


def _run(stages_raise: BaseException | None, fit_raises: BaseException) -> list[str]:
    order: list[str] = []

    async def scenario() -> None:
        hold = asyncio.Event()
        training = asyncio.ensure_future(_failing(fit_raises, hold))
        with pytest.raises(type(stages_raise) if stages_raise else type(fit_raises)):
            async with training_awaited(training, log, "t1"):
                if stages_raise is None:
                    hold.set()
                    await training  # the stages wait for the fit: its error is theirs
                asyncio.get_running_loop().call_later(0.05, hold.set)
                raise stages_raise or AssertionError("unreachable")
        order.append("done" if training.done() else "left running")

    asyncio.run(scenario())
    return order


def test_the_fits_own_error_propagating_is_not_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert _run(None, ValueError("fit broke")) == ["done"]
    assert "event=training_failed" not in caplog.text


def test_a_fits_error_beside_the_stages_is_logged_once_the_fit_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The stage failed first; the fit, still running, is waited for and its error logged.
    assert _run(TimeoutError("stage deadline"), ValueError("fit broke")) == ["done"]
    assert caplog.text.count("event=training_failed task_id=t1 error=ValueError('fit broke')") == 1
