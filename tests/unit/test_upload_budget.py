"""The server's bound on uploads received at once, by count and by bytes."""

from __future__ import annotations

import asyncio

import pytest

from quorum.server.upload_budget import UploadBudget


async def _enter(
    budget: UploadBudget, nbytes: int, entered: list[int], leave: asyncio.Event
) -> None:
    async with budget.hold(nbytes):
        entered.append(nbytes)
        await leave.wait()


def test_uploads_are_let_in_while_their_bytes_fit() -> None:
    async def scenario() -> None:
        budget = UploadBudget(max_uploads=4, max_bytes=100)
        entered: list[int] = []
        first, second = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_enter(budget, 60, entered, first))
        b = asyncio.create_task(_enter(budget, 60, entered, second))
        c = asyncio.create_task(_enter(budget, 30, entered, second))
        for _ in range(5):
            await asyncio.sleep(0)
        # 60 + 60 is over 100: the second waits; the third (60 + 30) fits meanwhile
        assert sorted(entered) == [30, 60] and budget.held == (2, 90)
        first.set()
        await a
        for _ in range(5):
            await asyncio.sleep(0)
        assert sorted(entered) == [30, 60, 60] and budget.held == (2, 90)
        second.set()
        await asyncio.gather(b, c)
        assert budget.held == (0, 0)

    asyncio.run(scenario())


def test_one_upload_larger_than_the_budget_is_let_in_alone() -> None:
    async def scenario() -> None:
        budget = UploadBudget(max_uploads=2, max_bytes=10)
        entered: list[int] = []
        leave = asyncio.Event()
        big = asyncio.create_task(_enter(budget, 1000, entered, leave))
        small = asyncio.create_task(_enter(budget, 1, entered, leave))
        for _ in range(5):
            await asyncio.sleep(0)
        assert entered == [1000] and budget.held == (1, 1000)
        leave.set()
        await asyncio.gather(big, small)
        assert entered == [1000, 1] and budget.held == (0, 0)

    asyncio.run(scenario())


def test_the_count_still_bounds_small_uploads() -> None:
    async def scenario() -> None:
        budget = UploadBudget(max_uploads=2, max_bytes=10**9)
        entered: list[int] = []
        leave = asyncio.Event()
        tasks = [asyncio.create_task(_enter(budget, 1, entered, leave)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(entered) == 2
        leave.set()
        await asyncio.gather(*tasks)
        assert len(entered) == 3

    asyncio.run(scenario())


def test_a_budget_lets_in_something() -> None:
    with pytest.raises(ValueError, match="at least one"):
        UploadBudget(0, 10)
