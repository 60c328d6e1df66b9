"""Uploads that end with no answer: the site's call breaks after the grant, or is cancelled while
it waits for the upload budget. Its task ends at once as lost, so that a round does not wait for
it until its deadline and an async run offers the site work again when it rejoins."""

from __future__ import annotations

import asyncio
import pathlib
import queue
import time
from typing import Any

import grpc
import pytest

from quorum.client import agent as agent_module
from quorum.proto import federation_pb2 as pb
from quorum.wire import blobs, frames
from quorum.wire.channel import STREAM_END
from tests.hostile_site import HostileSite
from tests.integration.harness import TASK, federation, run_config

DEADLINE = 30.0  # a round that waited for it would take this long; the tests need far less


def break_first_upload(monkeypatch: pytest.MonkeyPatch, site_examples: int, how: str) -> list[str]:
    """The first upload of the site that trains on `site_examples` sends its header and one
    chunk, then its call is cancelled; the agent then sees an RPC error (it ends its session and
    rejoins) or (`how` = "failed_report") an error it reports as its task's failure."""
    broken: list[str] = []
    real = agent_module.upload

    async def breaking(stub: Any, header: pb.UploadHeader, data: blobs.Pieces) -> Any:
        if broken or header.num_examples != site_examples:
            return await real(stub, header, data)
        broken.append(header.task_id)
        call = stub.Upload()
        await call.write(pb.UploadMessage(header=header))
        reply = await call.read()
        assert reply is not STREAM_END and reply.WhichOneof("kind") == "grant"
        await call.write(next(iter(data.chunks(head=frames.upload_chunk_head))))
        call.cancel()
        if how == "rpc_error":
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "net down"
            )
        raise ConnectionError("the upload stream broke")

    monkeypatch.setattr(agent_module, "upload", breaking)
    return broken


@pytest.mark.parametrize("how", ["rpc_error", "failed_report"])
def test_an_upload_broken_after_its_grant_ends_its_task_at_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    broken = break_first_upload(monkeypatch, 30, how)
    out: dict[str, Any] = {}

    async def scenario() -> None:
        cfg = run_config(rounds=1, min_fit_sites=1, min_available_sites=2, round_timeout_s=DEADLINE)
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "delta=1.0,n=10")
            fed.add_site("b", "delta=2.0,n=30")
            start = time.monotonic()
            run = await fed.wait_run(timeout=60)
            out["took"] = time.monotonic() - start
            out["detail"] = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")

    asyncio.run(scenario())
    assert broken
    fits = {p["site"]: p for p in out["detail"]["participants"] if p["kind"] == "fit"}
    assert fits["a"]["status"] == "accepted"
    assert fits["b"]["status"] == "lost", fits["b"]
    assert "broke off" in fits["b"]["error"]
    # The site's report of its failure is not a second answer to refuse.
    assert out["detail"]["rejected_uploads"] == []
    assert out["took"] < DEADLINE - 5, out["took"]


def test_an_async_site_whose_upload_broke_is_offered_work_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = break_first_upload(monkeypatch, 30, "rpc_error")
    accepted: dict[str, int] = {}

    async def scenario() -> None:
        cfg = run_config(
            mode="async",
            rounds=6,
            buffer_size=1,
            max_staleness=1000,
            min_fit_sites=1,
            min_available_sites=2,
            round_timeout_s=DEADLINE,
        )
        async with federation(tmp_path, [cfg]) as fed:
            fed.add_site("a", "delta=1.0,n=10,sleep=0.3")
            fed.add_site("b", "delta=2.0,n=30,sleep=0.3")
            run = await fed.wait_run(timeout=60)
            for r in await fed.api(f"/api/v1/runs/{run['id']}/rounds"):
                detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/{r['round']}")
                for p in detail["participants"]:
                    if p["kind"] == "fit" and p["status"] == "accepted":
                        accepted[p["site"]] = accepted.get(p["site"], 0) + 1

    asyncio.run(scenario())
    assert broken
    # Without the task ended, b would be busy with it until its deadline: a's updates alone.
    assert accepted.get("b", 0) >= 1, accepted


def test_an_upload_cancelled_while_it_waits_for_the_budget_ends_its_task(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        cfg = run_config(
            rounds=1,
            min_fit_sites=1,
            min_available_sites=3,
            fraction_evaluate=0.0,
            round_timeout_s=DEADLINE,
        )
        async with federation(tmp_path, [cfg], max_inflight_uploads=1) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            m1 = await asyncio.to_thread(HostileSite, fed.address, fed.register("m1"), TASK)
            m2 = await asyncio.to_thread(HostileSite, fed.address, fed.register("m2"), TASK)
            try:
                o1 = await asyncio.to_thread(m1.next_fit)
                o2 = await asyncio.to_thread(m2.next_fit)
                model = await asyncio.to_thread(m1.download, o1.model_digest)
                # m1 takes the one upload slot and sends nothing: m2's upload waits for it.
                held: queue.Queue[pb.UploadMessage | None] = queue.Queue()
                held.put(_header(m1, o1, model))
                holding = m1.stub.Upload(iter(held.get, None))
                grant = await asyncio.to_thread(next, holding)  # not on the server's loop
                assert grant.WhichOneof("kind") == "grant"
                waiting: queue.Queue[pb.UploadMessage | None] = queue.Queue()
                waiting.put(_header(m2, o2, model))
                queued = m2.stub.Upload(iter(waiting.get, None))

                def m2_waits() -> bool:
                    task = fed.services.book._tasks[o2.task_id]
                    return task.state == "receiving"

                while not m2_waits():
                    await asyncio.sleep(0.05)
                queued.cancel()
                while fed.services.book._tasks[o2.task_id].state != "done":
                    await asyncio.sleep(0.05)
                holding.cancel()
                start = time.monotonic()
                run = await fed.wait_run(timeout=60)
                took = time.monotonic() - start
            finally:
                m1.close()
                m2.close()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            status = {p["site"]: p["status"] for p in detail["participants"]}
            assert (status["a"], status["m2"]) == ("accepted", "lost"), status
            assert status["m1"] in ("lost", "rejected"), status  # the call ended, or broke
            assert took < DEADLINE - 5, took

    asyncio.run(scenario())


def test_an_upload_that_sends_nothing_is_refused_and_lets_the_others_in(
    tmp_path: pathlib.Path,
) -> None:
    # A site takes both upload places (two rounds' tasks) and sends no byte: after the session
    # transfer_idle_timeout_s (5 s here) each is refused, so the honest sites' uploads get in
    # again.
    async def scenario() -> None:
        cfg = run_config(
            rounds=3, min_fit_sites=1, min_available_sites=3, round_timeout_s=3, fraction_evaluate=0
        )
        async with federation(
            tmp_path, [cfg], max_inflight_uploads=2, transfer_idle_timeout_s=5
        ) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            fed.add_site("b", "delta=1.0,n=1")
            m = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), TASK)
            stalled = []
            try:
                for _ in range(2):
                    _, replies, _ = await _granted(m)
                    stalled.append(replies)
                receipts = [await asyncio.wait_for(asyncio.to_thread(next, r), 30) for r in stalled]
                run = await fed.wait_run(timeout=90)
            finally:
                m.close()
            assert [(r.receipt.code, "5 s" in r.receipt.message) for r in receipts] == [
                ("upload_stalled", True)
            ] * 2
            assert run["rounds_completed"] == 3

    asyncio.run(scenario())


def _header(site: HostileSite, offer: pb.TaskOffer, data: bytes) -> pb.UploadMessage:
    return pb.UploadMessage(
        header=pb.UploadHeader(
            session_id=site.session_id,
            task_id=offer.task_id,
            run_id=offer.run_id,
            round=offer.round,
            digest=blobs.digest(data),
            size=len(data),
            num_examples=1,
            metrics_json="{}",
        )
    )


def test_an_upload_that_trickles_is_refused_like_one_that_stalls(tmp_path: pathlib.Path) -> None:
    # A byte every 0.2 s keeps bytes arriving, but no chunk's worth in the idle time.
    async def scenario() -> pb.UploadReceipt:
        cfg = run_config(rounds=1, min_fit_sites=1, min_available_sites=1, round_timeout_s=30)
        async with federation(tmp_path, [cfg], transfer_idle_timeout_s=2) as fed:
            m = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), TASK)
            try:
                model, replies, requests = await _granted(m)
                answer = asyncio.ensure_future(asyncio.to_thread(next, replies))
                began = time.monotonic()
                for byte in model:
                    if answer.done() or time.monotonic() - began > 20:
                        break
                    requests.put(pb.UploadMessage(chunk=bytes([byte])))
                    await asyncio.sleep(0.2)
                reply = await asyncio.wait_for(answer, 30)
                requests.put(None)
                receipt: pb.UploadReceipt = reply.receipt
                return receipt
            finally:
                m.close()

    receipt = asyncio.run(scenario())
    assert (receipt.accepted, receipt.code) == (False, "upload_stalled")
    assert "in 2 s" in receipt.message


async def _granted(site: HostileSite) -> tuple[bytes, Any, queue.Queue[pb.UploadMessage | None]]:
    """The upload of the site's next fit, begun: its header sent and granted. Returns the model
    it was sent, the call's replies and the queue its chunks go into."""
    offer = await asyncio.to_thread(site.next_fit)
    model = await asyncio.to_thread(site.download, offer.model_digest)
    requests: queue.Queue[pb.UploadMessage | None] = queue.Queue()
    requests.put(_header(site, offer, model))
    replies = site.stub.Upload(iter(requests.get, None))
    grant = await asyncio.to_thread(next, replies)
    assert grant.WhichOneof("kind") == "grant"
    return model, replies, requests
