"""Synchronous rounds between the real server and real agents over loopback gRPC."""

from __future__ import annotations

import asyncio
import gc
import pathlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from quorum.client import agent as agent_module
from quorum.client.transfer import BlobCache
from quorum.proto import federation_pb2 as pb
from quorum.server.sessions import Session, SessionRegistry
from quorum.task import EvalResult, FitResult, JSONConfig, SiteTask
from quorum.wire.blobfiles import BlobFile
from quorum.wire.blobs import Params
from tests.integration import test_streamed_uploads as streamed
from tests.integration.harness import (
    buffers_made,
    federation,
    first_aborted,
    fold_in_slices,
    run_config,
    wait_for,
)
from tests.vector_task import expected_fedavg
from tests.vector_task import task as vector_task


def _final_model(fed: object, run_id: str, rounds: int) -> dict[str, np.ndarray]:
    model, _ = fed.services.checkpoints.open(run_id, rounds)  # type: ignore[attr-defined]
    return model.params()


@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "in_slices"])
def test_fedavg_rounds_fold_every_update_weighted_by_examples(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, sliced: bool
) -> None:
    slices = fold_in_slices(monkeypatch) if sliced else []

    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=3, min_fit_sites=3)]) as fed:
            fed.add_site("a", "delta=1.0,n=10,acc=0.9")
            fed.add_site("b", "delta=2.0,n=30,acc=0.6")
            fed.add_site("c", "delta=-1.0,n=60,acc=0.5")
            run = await fed.wait_run()
            assert run["rounds_completed"] == 3
            params = _final_model(fed, run["id"], 3)
            want = expected_fedavg(3, [(1.0, 10), (2.0, 30), (-1.0, 60)])
            for value in params.values():
                np.testing.assert_allclose(value, want, rtol=1e-6)
            model, _ = fed.services.checkpoints.open(run["id"], 3)
            assert run["model_digest"] == model.digest

            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/2")
            assert detail["status"] == "completed"
            assert detail["cohort"] == ["a", "b", "c"]
            fits = [p for p in detail["participants"] if p["kind"] == "fit"]
            assert {p["site"]: p["num_examples"] for p in fits} == {"a": 10, "b": 30, "c": 60}
            assert all(p["status"] == "accepted" and p["bytes_in"] > 0 for p in fits)
            # Round 2 trains the model each site already fetched to evaluate round 1: sites
            # cache blobs by digest, so nothing is downloaded twice.
            assert all(p["bytes_out"] == 0 for p in fits)
            first = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            model_size = len(fed.services.checkpoints.open(run["id"], 0)[0])
            assert all(
                p["bytes_out"] == model_size for p in first["participants"] if p["kind"] == "fit"
            )
            evaluate = detail["metrics"]["evaluate"]
            # example-weighted over 100 examples, and the plain mean over the three sites
            assert evaluate["accuracy"] == pytest.approx((0.9 * 10 + 0.6 * 30 + 0.5 * 60) / 100)
            assert evaluate["accuracy_mean_sites"] == pytest.approx((0.9 + 0.6 + 0.5) / 3)
            assert detail["metrics"]["fit"]["num_examples"] == 100
            assert detail["rejected_uploads"] == []

    asyncio.run(scenario())
    # 3 rounds of 3 uploads of 15 values, each in 3 slices
    assert sorted(slices) == (sorted([(0, 5), (5, 10), (10, 15)] * 9) if sliced else [])


@dataclass(frozen=True)
class SpareWatch:
    """A vector site that notes, at each fit, the bytes its agent's cache holds spare."""

    site: SiteTask
    cache: BlobCache
    seen: list[int]

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        self.seen.append(self.cache.spare_bytes)
        return self.site.fit(params, config)

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        return self.site.evaluate(params, config)


@pytest.mark.parametrize("evaluate", [False, True], ids=["fit_only", "with_evaluation"])
def test_sites_make_the_next_models_buffer_while_they_wait(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, evaluate: bool
) -> None:
    made = buffers_made(monkeypatch)
    caches = [BlobCache(spare=True), BlobCache(spare=True)]
    seen: list[int] = []
    config = run_config(rounds=3, fraction_evaluate=1 if evaluate else 0)

    async def scenario() -> int:
        async with federation(tmp_path, [config]) as fed:
            for name, cache in zip("ab", caches, strict=True):
                site = vector_task.site("delta=1.0,n=10,acc=0.9", "cpu", 0)
                fed.add_site(name, "", site_task=SpareWatch(site, cache, seen), cache=cache)
            run = await fed.wait_run()
            size = len(fed.services.checkpoints.open(run["id"], 3)[0])

            async def spares_made() -> bool:  # the last fits' spares, made after their uploads
                return all(cache.spare_bytes == size for cache in caches)

            if not evaluate:
                await wait_for(spares_made, 10)
            return size

    size = asyncio.run(scenario())
    # No fit ran beside a spare: each was taken by a download, or let go as the fit's model
    # was found cached (with evaluation, each fit trains the model its site evaluated).
    assert seen == [0] * 6
    # Round 1's two buffers, then one spare after each of the 6 fits, which the next
    # downloads landed in (round 2 and 3's fits, or each round's evaluation): each would
    # otherwise have made a buffer of its own.
    assert made == [size] * 8
    if evaluate:  # the last evaluation took the last spares
        assert all(cache.spare_bytes == 0 for cache in caches)


@dataclass
class FitWatch:
    """A vector site that keeps a weak reference to each array its fits return."""

    site: SiteTask
    returned: list[weakref.ref[np.ndarray]]

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        result = self.site.fit(params, config)
        self.returned.extend(weakref.ref(array) for array in result.params.values())
        return result

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        return self.site.evaluate(params, config)


def test_a_site_lets_a_broken_uploads_update_go_before_it_rejoins(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The error of a broken transfer ends the session. Its traceback holds the fit's frames, and
    # their update and model, in a reference cycle through the session's tasks; the cyclic
    # collector, kept off here, might free it only after the next download had made its buffer.
    returned: list[weakref.ref[np.ndarray]] = []
    sessions: list[str] = []
    real_upload, real_open = agent_module.upload, SessionRegistry.open

    async def breaks_once(*args: Any) -> pb.UploadReceipt:
        if len(sessions) == 1:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "link down"
            )
        return await real_upload(*args)

    def opened(self: SessionRegistry, site: str, task: str) -> Session:
        session = real_open(self, site, task)
        sessions.append(session.id)
        return session

    monkeypatch.setattr(agent_module, "upload", breaks_once)
    monkeypatch.setattr(SessionRegistry, "open", opened)
    config = run_config(rounds=1, min_fit_sites=1, min_available_sites=1, fraction_evaluate=0)

    async def scenario() -> list[bool]:
        async with federation(tmp_path, [config]) as fed:
            site = vector_task.site("delta=1.0,n=10", "cpu", 0)
            fed.add_site("a", "", site_task=FitWatch(site, returned))

            async def rejoined() -> bool:
                return len(sessions) >= 2

            await wait_for(rejoined, 20)
            broken_fit = [ref() is not None for ref in returned[:2]]
            await fed.wait_run()
            return broken_fit

    collecting = gc.isenabled()
    gc.disable()
    try:
        broken_fit = asyncio.run(scenario())
    finally:
        if collecting:
            gc.enable()
    assert broken_fit == [False, False]  # the first fit's two arrays, gone by the new session
    assert len(returned) == 4  # the round was answered again, by the new session's fit


def test_fedyogi_state_is_checkpointed_each_round(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = run_config(rounds=2, strategy="fedyogi", server_learning_rate=0.1)
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            fed.add_site("b", "delta=1.0,n=1")
            run = await fed.wait_run()
            _, state = fed.services.checkpoints.open(run["id"], 2)
            assert int(state["t"].reshape(-1)[0]) == 2
            assert set(state) == {"t", "m", "v"}
            params = _final_model(fed, run["id"], 2)
            # Yogi moves against the sign of nothing here: both rounds push every weight up.
            assert all((v > 0).all() for v in params.values())

    asyncio.run(scenario())


def test_cohort_respects_fraction_and_max(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = run_config(
            rounds=2, fraction_fit=0.5, min_fit_sites=1, max_fit_sites=2, min_available_sites=4
        )
        async with federation(tmp_path, [cfg]) as fed:
            for name in "abcd":
                fed.add_site(name, "delta=1.0,n=1")
            run = await fed.wait_run()
            for round_no in (1, 2):
                detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/{round_no}")
                assert len(detail["cohort"]) == 2

    asyncio.run(scenario())


def test_round_aborts_and_reruns_when_too_few_sites(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = run_config(rounds=1, min_fit_sites=2, min_available_sites=2, wait_timeout_s=0.5)
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            await first_aborted(fed)  # one site only
            fed.add_site("b", "delta=1.0,n=1")
            run = await fed.wait_run()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            assert detail["status"] == "completed"
            assert detail["attempt"] >= 2
            reasons = [a["abort_reason"] for a in detail["earlier_attempts"]]
            assert all("min_fit_sites is 2" in r for r in reasons)

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["sync", "async", "gossip"])
def test_a_round_waits_for_sites_of_its_own_task(tmp_path: pathlib.Path, mode: str) -> None:
    # A site of another task's run is connected: it is no site of this run's cohort, so the
    # round waits for a second site of its own rather than aborting its attempts at once.
    other = "tests.integration.test_streamed_uploads:TASK"
    extra: dict[str, Any] = {
        "sync": {},
        "async": {"mode": "async", "buffer_size": 2, "max_staleness": 10},
        "gossip": {"mode": "gossip", "topology": "ring"},
    }[mode]

    async def scenario() -> None:
        cfg = run_config(rounds=1, min_fit_sites=2, min_available_sites=2, **extra)
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("x", "1.0", site_task=streamed.TASK.site("1.0", "cpu", 0), task_ref=other)
            fed.add_site("a", "delta=1.0,n=1")
            await wait_for(lambda: _if(len(fed.services.sessions.connected()) == 2), timeout=30)
            await asyncio.sleep(1.0)  # were x counted, every attempt would abort meanwhile
            fed.add_site("b", "delta=1.0,n=1")
            run = await fed.wait_run(timeout=60)
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            assert detail["attempt"] == 1
            assert {p["site"] for p in detail["participants"] if p["kind"] == "fit"} == {
                "a",
                "b",
            }

    asyncio.run(scenario())


async def _if(condition: bool) -> bool | None:
    return condition or None


def test_run_submitted_through_the_admin_api_runs(tmp_path: pathlib.Path) -> None:
    from quorum.admin.client import AdminClient
    from tests.integration.harness import TOKEN

    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            fed.add_site("a", "delta=0.5,n=1")
            fed.add_site("b", "delta=0.5,n=1")
            client = AdminClient(fed.admin_url, TOKEN)
            body = run_config(name="api-run", rounds=2).model_dump(mode="json")
            created = await asyncio.to_thread(client.post, "/api/v1/runs", body)
            client.close()
            assert created["status"] == "queued"
            run = await fed.wait_run()
            assert run["id"] == created["id"] and run["rounds_completed"] == 2

    asyncio.run(scenario())


def test_uploads_queue_for_a_single_in_memory_slot(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = run_config(rounds=2, min_fit_sites=4, min_available_sites=4)
        async with federation(tmp_path, [cfg], max_inflight_uploads=1) as fed:
            sites = [(0.5, 1), (1.0, 2), (1.5, 3), (2.0, 4)]
            for i, (delta, n) in enumerate(sites):
                fed.add_site(f"s{i}", f"delta={delta},n={n}")
            run = await fed.wait_run()
            for value in _final_model(fed, run["id"], 2).values():
                np.testing.assert_allclose(value, expected_fedavg(2, sites), rtol=1e-6)

    asyncio.run(scenario())


def test_a_round_every_site_fails_alike_fails_the_run_at_once(tmp_path: pathlib.Path) -> None:
    """The same error from every site is a bug another attempt would repeat: the run fails on
    the first attempt with that error, instead of after five."""

    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=3, min_fit_sites=2)]) as fed:
            fed.add_site("a", "fail=no such column x")
            fed.add_site("b", "fail=no such column x")
            run = await fed.wait_run("failed")
            assert "every site of the cohort (2) failed its fit with the same error" in run["error"]
            assert "RuntimeError: no such column x" in run["error"]
            rounds = await fed.api(f"/api/v1/runs/{run['id']}/rounds")
            assert [(r["round"], r["attempt"], r["status"]) for r in rounds] == [(1, 1, "aborted")]

    asyncio.run(scenario())


def test_a_round_whose_sites_fail_differently_is_tried_again(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=1, min_fit_sites=2)]) as fed:
            fed.add_site("a", "fail=disk full")
            fed.add_site("b", "fail=out of memory")
            run = await fed.wait_run("failed", timeout=60)
            assert "aborted 5 times" in run["error"]

    asyncio.run(scenario())


def test_a_site_with_nothing_to_evaluate_is_left_out_of_the_means(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=1, min_fit_sites=2)]) as fed:
            fed.add_site("a", "n=10,acc=0.9")
            fed.add_site("b", "n=30,acc=0.5,held_out=0")
            run = await fed.wait_run()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            assert detail["rejected_uploads"] == []
            evaluations = {p["site"]: p for p in detail["participants"] if p["kind"] == "evaluate"}
            assert evaluations["b"]["status"] == "ok" and evaluations["b"]["num_examples"] == 0
            assert detail["metrics"]["evaluate"]["num_sites"] == 1
            assert detail["metrics"]["evaluate"]["accuracy_mean_sites"] == pytest.approx(0.9)

    asyncio.run(scenario())


def test_a_long_run_keeps_a_bounded_number_of_checkpoints(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        config = run_config(rounds=12, min_fit_sites=2, fraction_evaluate=0.0)
        async with federation(tmp_path, [config], keep_checkpoints=2) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            fed.add_site("b", "delta=1.0,n=1")
            run = await fed.wait_run()
            files = sorted(p.name for p in (fed.state_dir / "checkpoints" / run["id"]).iterdir())
            assert [f.split(".")[0] for f in files[::2]] == [
                "round-00000",
                "round-00011",
                "round-00012",
            ]
            # pruned rounds are the spares the next ones are written over, one of each kind
            assert sorted(p.name for p in (fed.state_dir / "checkpoints").iterdir()) == [
                run["id"],
                "spare.model.safetensors",
                "spare.strategy.safetensors",
            ]
            for value in _final_model(fed, run["id"], 12).values():
                np.testing.assert_allclose(value, 12.0)

    asyncio.run(scenario())


def test_an_update_not_folded_whole_aborts_the_attempt_and_leaves_no_trace(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold that stops partway (its upload's spool unreadable, as a disk error would leave it)
    may have put part of the update in the sum, which a float sum cannot take back: the site's
    upload is refused, the attempt aborted and run again, and the final model is the FedAvg of
    the sites' updates alone."""
    folded = BlobFile.blocks
    failures: list[int] = []

    def fails_once(self: BlobFile) -> Iterator[tuple[int, np.ndarray]]:
        yield from folded(self)  # every value of the update is in the sum...
        if not failures:
            failures.append(1)  # ...and then the read fails, before the fold is counted
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(BlobFile, "blocks", fails_once)

    async def scenario() -> None:
        async with federation(tmp_path, [run_config(rounds=1, min_fit_sites=2)]) as fed:
            fed.add_site("a", "delta=1.0,n=10,acc=0.9")
            fed.add_site("b", "delta=2.0,n=30,acc=0.6")
            run = await fed.wait_run()
            assert run["rounds_completed"] == 1
            for value in _final_model(fed, run["id"], 1).values():
                np.testing.assert_allclose(value, expected_fedavg(1, [(1.0, 10), (2.0, 30)]))
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            (aborted,) = detail["earlier_attempts"]
            assert aborted["status"] == "aborted"
            assert "could not be folded whole" in aborted["abort_reason"]

    asyncio.run(scenario())
