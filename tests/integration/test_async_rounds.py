"""Asynchronous (FedBuff) rounds between the real server and real agents over loopback gRPC.

The vector task's sites return `received + delta`, so every update is exactly the site's delta
whatever model version it trained on: the final model must equal the sum, over the server
steps, of each step's staleness-weighted buffer as the store records it."""

from __future__ import annotations

import asyncio
import pathlib
import threading
from typing import Any

import numpy as np
import pytest

from quorum.aggregation.fedbuff import staleness_weight
from quorum.client.agent import SimulatedCrash
from quorum.config import RunConfig
from quorum.privacy.dp.accounting import epsilon
from quorum.privacy.secagg import error_bound
from quorum.server.async_driver import AsyncDriver
from quorum.wire.blobfiles import BlobFile
from tests.integration.harness import (
    Federation,
    federation,
    fold_in_slices,
    run_config,
    wait_for,
)

DELTAS = {"a": 1.0, "b": 2.0, "c": -1.0}


def _async_config(**overrides: Any) -> RunConfig:
    settings: dict[str, Any] = {
        "mode": "async",
        "rounds": 5,
        "buffer_size": 2,
        "staleness_exponent": 0.5,
        "max_staleness": 10,
        "min_fit_sites": 1,
        "min_available_sites": 1,
    }
    return run_config(**{**settings, **overrides})


async def _rounds(fed: Federation, run_id: str, count: int) -> list[dict[str, Any]]:
    """The details of rounds 1..count; asserts that no attempt of the run was left running."""
    every = await fed.api(f"/api/v1/runs/{run_id}/rounds", limit=1000)
    assert all(r["status"] in ("completed", "aborted") for r in every), every
    return [await fed.api(f"/api/v1/runs/{run_id}/rounds/{r}") for r in range(1, count + 1)]


@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "in_slices"])
def test_fedbuff_applies_exactly_k_weighted_updates_per_step(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, sliced: bool
) -> None:
    slices = fold_in_slices(monkeypatch) if sliced else []
    folded: list[int] = []  # the updates applied, each read in 3 slices when sliced

    async def scenario() -> None:
        async with federation(tmp_path, [_async_config()]) as fed:
            fed.add_site("a", "delta=1.0,n=10,sleep=0.05")
            fed.add_site("b", "delta=2.0,n=30,sleep=0.1")
            fed.add_site("c", "delta=-1.0,n=60,sleep=0.4")  # slow: its updates go stale
            run = await fed.wait_run(timeout=60)
            assert run["rounds_completed"] == 5
            details = await _rounds(fed, run["id"], 5)
            expected = 0.0
            seen: set[str] = set()
            for detail in details:
                assert detail["status"] == "completed"
                fits = [p for p in detail["participants"] if p["kind"] == "fit"]
                applied = [p for p in fits if p["status"] == "accepted"]
                assert len(applied) == 2, detail  # exactly K updates per step
                for p in applied:
                    assert p["task_id"] not in seen  # no update is applied twice
                    seen.add(p["task_id"])
                    assert p["staleness"] is not None and p["staleness"] >= 0
                # the buffer's mean is example-weighted: Σ s(τ)·n·δ / Σ n
                expected += sum(
                    staleness_weight(p["staleness"], 0.5) * p["num_examples"] * DELTAS[p["site"]]
                    for p in applied
                ) / sum(p["num_examples"] for p in applied)
                fit_metrics = detail["metrics"]["fit"]
                assert fit_metrics["num_updates"] == 2
                assert fit_metrics["staleness_max"] == max(p["staleness"] for p in applied)
            # versions are monotone: round r's checkpoint is the model after r steps
            finished = [d["finished_at"] for d in details]
            assert finished == sorted(finished)
            assert any(p["staleness"] for d in details for p in d["participants"])
            model, state = fed.services.checkpoints.open(run["id"], 5)
            assert int(state["fedbuff.version"][0]) == 5
            for value in model.params().values():
                np.testing.assert_allclose(value, expected, rtol=1e-5)
            # every version was evaluated by the sites
            assert all("evaluate" in d["metrics"] for d in details)
            folded.append(len(seen))

    asyncio.run(scenario())
    assert folded == [10]
    # Updates folded after the run's 5th step are refused, not read: 3 slices per update.
    assert sorted(slices) == (sorted([(0, 5), (5, 10), (10, 15)] * 10) if sliced else [])


def test_a_model_of_several_dtypes_is_made_flat_once_per_version_not_per_upload(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int64 tensor beside float32 ones: the model's flat vector is a float64 copy of it.
    Each fold reads the vector published with its version; none makes another per upload."""
    made: list[str] = []
    flat = BlobFile.flat

    def counted(model: BlobFile) -> np.ndarray:
        made.append(model.path.name)
        return flat(model)

    monkeypatch.setattr(BlobFile, "flat", counted)

    async def scenario() -> None:
        cfg = _async_config(task="tests.vector_task:mixed", rounds=3, buffer_size=2)
        async with federation(tmp_path, [cfg]) as fed:
            for name in ("a", "b"):
                fed.add_site(name, "delta=1.0,n=10", task_ref="tests.vector_task:mixed")
            run = await fed.wait_run(timeout=60)
            details = await _rounds(fed, run["id"], 3)
            folded = [
                [p for p in d["participants"] if p["kind"] == "fit" and p["status"] == "accepted"]
                for d in details
            ]
            assert sum(map(len, folded)) == 6
            assert len(made) == 4, made  # the resumed version and the three steps' models
            # each step's mean update (δ = 1); the int64 counter takes it rounded, step by step
            means = [sum(staleness_weight(p["staleness"], 0.5) for p in f) / 2 for f in folded]
            model, _ = fed.services.checkpoints.open(run["id"], 3)
            params = model.params()
            assert params["steps"].dtype == np.int64
            np.testing.assert_allclose(params["w"], sum(means), rtol=1e-5)
            np.testing.assert_array_equal(params["steps"], sum(np.rint(means)))

    asyncio.run(scenario())


def test_updates_beyond_max_staleness_are_dropped_with_a_reason(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = _async_config(rounds=10, max_staleness=0)
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "delta=1.0,sleep=0.05")
            fed.add_site("b", "delta=1.0,sleep=0.05")
            fed.add_site("c", "delta=5.0,sleep=0.3")
            run = await fed.wait_run(timeout=60)
            details = await _rounds(fed, run["id"], 10)
            rejected = [r for d in details for r in d["rejected_uploads"]]
            stale = [r for r in rejected if r["code"] == "stale_update"]
            assert stale and {r["code"] for r in rejected} <= {
                "stale_update",
                "run_ended",
                "task_closed",
            }
            assert "c" in {r["site"] for r in stale}  # never fresh: two steps per fit of c
            assert "exceeds max_staleness 0" in stale[0]["message"]
            applied = [
                p
                for d in details
                for p in d["participants"]
                if p["kind"] == "fit" and p["status"] == "accepted"
            ]
            assert all(p["staleness"] == 0 for p in applied)
            model, _ = fed.services.checkpoints.open(run["id"], 10)
            want = sum(5.0 if p["site"] == "c" else 1.0 for p in applied) / 2
            for value in model.params().values():
                np.testing.assert_allclose(value, want, rtol=1e-5)

    asyncio.run(scenario())


def test_secagg_cohorts_fill_the_buffers(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The step writes and checkpoints a model: in a worker thread, never on the event loop.
    on_loop: list[bool] = []
    step = AsyncDriver._step

    def watched(self: AsyncDriver, fit_metrics: dict[str, float]) -> None:
        on_loop.append(threading.current_thread() is threading.main_thread())
        step(self, fit_metrics)

    monkeypatch.setattr(AsyncDriver, "_step", watched)

    async def scenario() -> None:
        cfg = _async_config(
            rounds=3,
            buffer_size=2,
            min_fit_sites=2,
            secagg={"enabled": True, "clip_range": 8.0, "max_weight": 10, "stage_timeout_s": 10},
        )
        async with federation(tmp_path, [cfg]) as fed:
            for name in ("a", "b", "c", "d"):
                fed.add_site(name, "delta=0.5,n=10,sleep=0.05")
            run = await fed.wait_run(timeout=90)
            details = await _rounds(fed, run["id"], 3)
            expected = 0.0
            for detail in details:
                assert detail["status"] == "completed"
                assert detail["secagg"]["recovered"] is True
                assert detail["secagg"]["cohort"] == 2
                staleness = detail["metrics"]["fit"]["staleness_max"]
                expected += staleness_weight(int(staleness), 0.5) * 0.5
            model, _ = fed.services.checkpoints.open(run["id"], 3)
            # each step's mean is off by the quantisation bound scaled by max_weight / weight
            atol = 3 * error_bound(8.0, 20, 2) * 10 / 20 + 1e-6
            for value in model.params().values():
                np.testing.assert_allclose(value, expected, rtol=0, atol=atol)

    asyncio.run(scenario())
    assert on_loop == [False, False, False]


def test_wall_time_limit_ends_the_run_and_discards_the_partial_buffer(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        cfg = _async_config(rounds=10_000, buffer_size=3, max_wall_time_s=1.5)
        async with federation(tmp_path, []) as fed:
            fed.add_site("a", "delta=1.0,sleep=0.1")
            fed.add_site("b", "delta=1.0,sleep=0.25")

            async def both_connected() -> bool:
                return len(fed.services.sessions.connected()) == 2

            # the wall time counts from the run's start: submitted once both sites are there
            await wait_for(both_connected, 30)
            fed.server.coordinator.submit(cfg)
            run = await fed.wait_run(timeout=60)
            assert 0 < run["rounds_completed"] < 10_000
            await _rounds(fed, run["id"], run["rounds_completed"])
            rounds = await fed.api(f"/api/v1/runs/{run['id']}/rounds", limit=1000)
            last = rounds[-1]
            assert last["round"] == run["rounds_completed"] + 1
            assert last["status"] == "aborted"
            assert "max_wall_time_s = 1.5" in last["abort_reason"]
            assert "buffered update(s) discarded" in last["abort_reason"]
            # the final model is the last step's: the discarded buffer was never applied
            model, state = fed.services.checkpoints.open(run["id"], last["round"] - 1)
            assert int(state["fedbuff.version"][0]) == run["rounds_completed"]
            assert run["model_digest"] == model.digest

    asyncio.run(scenario())


def test_a_secagg_cohort_that_loses_a_site_is_topped_up_and_the_run_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    crashed: list[int] = []

    def crash_in_round_2(round_no: int, stage: str) -> None:
        # round 2 or later: which cohort a lands in depends on how fast the first one finishes
        if round_no >= 2 and stage == "masked-input" and not crashed:
            crashed.append(round_no)
            raise SimulatedCrash("killed at masked input")

    async def scenario() -> None:
        cfg = _async_config(
            rounds=4,
            buffer_size=2,
            min_fit_sites=2,
            secagg={
                "enabled": True,
                "clip_range": 8.0,
                "max_weight": 10,
                "stage_timeout_s": 3,
                "threshold": 2,
            },
        )
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "delta=0.5,n=10,sleep=0.05", on_stage=crash_in_round_2)
            for name in ("b", "c", "d"):
                fed.add_site(name, "delta=0.5,n=10,sleep=0.05")
            run = await fed.wait_run(timeout=120)
            assert run["rounds_completed"] == 4
            await _rounds(fed, run["id"], 4)
            # a cohort of two that loses one cannot be unmasked (threshold 2): it aborted and
            # was formed again with a free site
            rounds = await fed.api(f"/api/v1/runs/{run['id']}/rounds", limit=1000)
            assert crashed and any(r["status"] == "aborted" for r in rounds), rounds

    asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # z is tiny here
def test_central_dp_clips_each_update_once_per_buffer_and_accounts_every_step(
    tmp_path: pathlib.Path,
) -> None:
    """DP-FedBuff: every update clipped to C and counted once whatever its example count, no
    site twice in a buffer, noise z·C on each buffer's sum, and one Gaussian release per step."""
    z, norm, numel = 1e-3, 1.0, 15
    cfg = _async_config(
        rounds=4, central_dp={"enabled": True, "noise_multiplier": z, "clipping_norm": norm}
    )

    async def scenario() -> None:
        async with federation(tmp_path, [cfg]) as fed:
            # every delta's norm (|δ|·√15) exceeds C: each update arrives clipped to norm 1
            # a is ten times as fast as b: without the rule it would fill buffers alone
            fed.add_site("a", "delta=1.0,n=10,sleep=0.02")
            fed.add_site("b", "delta=2.0,n=30,sleep=0.2")
            fed.add_site("c", "delta=-1.0,n=60,sleep=0.3")
            run = await fed.wait_run(timeout=60)
            details = await _rounds(fed, run["id"], 4)
            expected = 0.0
            for r, detail in enumerate(details, start=1):
                applied = [
                    p
                    for p in detail["participants"]
                    if p["kind"] == "fit" and p["status"] == "accepted"
                ]
                assert len({p["site"] for p in applied}) == len(applied) == 2, detail
                expected += sum(
                    staleness_weight(p["staleness"], 0.5) * np.sign(DELTAS[p["site"]])
                    for p in applied
                ) / (2 * np.sqrt(numel))
                released = detail["metrics"]["central_dp"]
                assert released["noise_multiplier"] == z and released["sample_rate"] == 1.0
                assert released["epsilon"] == pytest.approx(epsilon("rdp", 1e-5, [(z, 1.0, r)]))
            model, _ = fed.services.checkpoints.open(run["id"], 4)
            for value in model.params().values():
                # the noise per element is z·C/K per step: 5e-4, 1e-3 over four steps
                np.testing.assert_allclose(value, expected, rtol=0, atol=1e-2)
            privacy = await fed.api(f"/api/v1/runs/{run['id']}/privacy")
            assert privacy["central"]["mode"] == "central"
            assert len(privacy["central"]["rounds"]) == 4

    asyncio.run(scenario())


def test_uploads_queued_behind_the_last_step_make_no_further_step(tmp_path: pathlib.Path) -> None:
    """K = 1 and six fast sites: uploads wait on the fold lock as the last step is made."""

    async def scenario() -> None:
        cfg = _async_config(rounds=3, buffer_size=1)
        async with federation(tmp_path, [cfg]) as fed:
            for name in "abcdef":
                fed.add_site(name, "delta=1.0")
            run = await fed.wait_run(timeout=60)
            assert run["rounds_completed"] == 3
            await _rounds(fed, run["id"], 3)
            checkpoints = fed.services.checkpoints
            assert not checkpoints.model_path(run["id"], 4).exists()
            model, state = checkpoints.open(run["id"], 3)
            assert int(state["fedbuff.version"][0]) == 3 and run["model_digest"] == model.digest

    asyncio.run(scenario())
