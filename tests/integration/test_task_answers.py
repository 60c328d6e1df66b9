"""Answers that do not fit their task's kind of phase: a plain fit task is answered with a
gossip parcel, a secure-aggregation message, a gossip message and an evaluate result. Each is
refused with its code, ends the site's task as rejected and is recorded against its round, which
goes on with the honest sites."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Callable

from quorum.proto import federation_pb2 as pb
from tests.hostile_site import HostileSite
from tests.integration.harness import TASK, federation, run_config

SITES = [("a", "delta=0.25,n=10"), ("b", "delta=0.5,n=30")]


def _notice(site: HostileSite, task_id: str, timeout: float = 20) -> pb.Notice:
    """The server's notice about `task_id`, once the site's reader has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for notice in list(site.notices):
            if notice.task_id == task_id:
                return notice
        time.sleep(0.05)
    raise TimeoutError(f"no notice about task {task_id!r} within {timeout} s")


def _parcel(site: HostileSite, offer: pb.TaskOffer) -> tuple[str, str]:
    model = site.download(offer.model_digest)
    receipt = site.upload(offer, model, gossip=pb.GossipAddress(receiver=1))
    assert not receipt.accepted
    return receipt.code, receipt.message


def _sent(
    message: Callable[[str], pb.SiteMessage],
) -> Callable[[HostileSite, pb.TaskOffer], tuple[str, str]]:
    def send(site: HostileSite, offer: pb.TaskOffer) -> tuple[str, str]:
        site.send(message(offer.task_id))
        notice = _notice(site, offer.task_id)
        return notice.code, notice.message

    return send


# (code, a word of its message, how to send it), one per round.
ANSWERS = [
    ("not_gossip", "gossip", _parcel),
    (
        "unknown_task",
        "secure-aggregation",
        _sent(lambda t: pb.SiteMessage(secagg=pb.SecAggReply(task_id=t, keys=pb.SecAggKeys()))),
    ),
    (
        "unknown_task",
        "gossip",
        _sent(lambda t: pb.SiteMessage(gossip=pb.GossipReply(task_id=t, key=pb.GossipKey()))),
    ),
    (
        "wrong_kind",
        "fit task",
        _sent(
            lambda t: pb.SiteMessage(
                result=pb.TaskResult(task_id=t, status=pb.RESULT_STATUS_OK, num_examples=1)
            )
        ),
    ),
]


def _answer_each(site: HostileSite) -> list[tuple[str, str]]:
    out = [send(site, site.next_fit()) for _, _, send in ANSWERS]
    site.close()
    return out


def test_an_answer_of_another_kind_of_phase_is_refused(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = run_config(rounds=len(ANSWERS), min_fit_sites=2, min_available_sites=3)
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in SITES:
                fed.add_site(name, data)
            mallory = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), TASK)
            answers = await asyncio.to_thread(_answer_each, mallory)
            run = await fed.wait_run(timeout=60)
            for (code, word, _), (got, message) in zip(ANSWERS, answers, strict=True):
                assert got == code, message
                assert word in message
            for r, (code, _, _) in enumerate(ANSWERS, 1):
                detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/{r}")
                assert [x["code"] for x in detail["rejected_uploads"]] == [code]
                fit = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
                assert fit == {"a": "accepted", "b": "accepted", "m": "rejected"}

    asyncio.run(scenario())
