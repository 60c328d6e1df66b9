"""Answers that do not fit their task's kind of phase (plain, secure-aggregation or gossip fit):
a gossip parcel, a model instead of a parcel, a secure-aggregation or a gossip message, an
evaluate result. Each is refused with its code, ends the site's task as rejected and is recorded
against its round, which goes on with the honest sites."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from quorum.proto import federation_pb2 as pb
from tests.hostile_site import HostileSite
from tests.integration.harness import TASK, federation, run_config

Answer = Callable[[HostileSite, pb.TaskOffer], tuple[str, str]]


def _notice(site: HostileSite, task_id: str, timeout: float = 20) -> pb.Notice:
    """The server's notice about `task_id`, once the site's reader has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for notice in list(site.notices):
            if notice.task_id == task_id:
                return notice
        time.sleep(0.05)
    raise TimeoutError(f"no notice about task {task_id!r} within {timeout} s")


def _uploaded(**header: Any) -> Answer:
    def upload(site: HostileSite, offer: pb.TaskOffer) -> tuple[str, str]:
        receipt = site.upload(offer, site.download(offer.model_digest), **header)
        assert not receipt.accepted
        return receipt.code, receipt.message

    return upload


def _sent(message: Callable[[str], pb.SiteMessage]) -> Answer:
    def send(site: HostileSite, offer: pb.TaskOffer) -> tuple[str, str]:
        site.send(message(offer.task_id))
        notice = _notice(site, offer.task_id)
        return notice.code, notice.message

    return send


PARCEL = ("not_gossip", "gossip", _uploaded(gossip=pb.GossipAddress(receiver=1)))
SECAGG = (
    "unknown_task",
    "secure-aggregation",
    _sent(lambda t: pb.SiteMessage(secagg=pb.SecAggReply(task_id=t, keys=pb.SecAggKeys()))),
)
GOSSIP = (
    "unknown_task",
    "gossip",
    _sent(lambda t: pb.SiteMessage(gossip=pb.GossipReply(task_id=t, key=pb.GossipKey()))),
)
RESULT = (
    "wrong_kind",
    "fit task",
    _sent(
        lambda t: pb.SiteMessage(
            result=pb.TaskResult(task_id=t, status=pb.RESULT_STATUS_OK, num_examples=1)
        )
    ),
)
MODEL = ("gossip_parcel_expected", "sealed models", _uploaded())
# A parcel's digest is the address its receiver downloads it by: SHA-256 only.
BLAKE3_PARCEL = (
    "parcel_digest",
    "SHA-256",
    _uploaded(gossip=pb.GossipAddress(receiver=1), digest_algorithm="blake3"),
)
HONEST = ["a", "b", "c", "d"]

# Each kind of run, and the answers (code, a word of its message, how to send it) that its fit
# tasks refuse, one per round.
KINDS: dict[str, tuple[dict[str, Any], list[tuple[str, str, Answer]]]] = {
    "plain": ({}, [PARCEL, SECAGG, GOSSIP, RESULT]),
    "secagg": (
        {
            "secagg": {"enabled": True, "threshold": 3, "stage_timeout_s": 5},
            "fraction_evaluate": 0.0,
        },
        [PARCEL, GOSSIP, RESULT],
    ),
    "gossip": (
        {"mode": "gossip", "topology": "ring", "gossip_stage_timeout_s": 5},
        [MODEL, BLAKE3_PARCEL, SECAGG, RESULT],
    ),
}


def _answer_each(
    site: HostileSite, answers: list[tuple[str, str, Answer]]
) -> list[tuple[str, str]]:
    out = [send(site, site.next_fit()) for _, _, send in answers]
    site.close()
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_of_another_kind_of_phase_is_refused(tmp_path: pathlib.Path, kind: str) -> None:
    settings, answers = KINDS[kind]

    async def scenario() -> None:
        cfg = run_config(
            rounds=len(answers),
            min_fit_sites=len(HONEST),
            min_available_sites=len(HONEST) + 1,
            **settings,
        )
        async with federation(tmp_path, [cfg]) as fed:
            for i, name in enumerate(HONEST):
                fed.add_site(name, f"delta={0.25 * (i + 1)},n={10 * (i + 1)}")
            mallory = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), TASK)
            got = await asyncio.to_thread(_answer_each, mallory, answers)
            run = await fed.wait_run(timeout=60)
            for (code, word, _), (answered, message) in zip(answers, got, strict=True):
                assert answered == code, message
                assert word in message
            for r, (code, _, _) in enumerate(answers, 1):
                detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/{r}")
                refused = [x["code"] for x in detail["rejected_uploads"] if x["site"] == "m"]
                assert refused == [code]
                fit = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
                assert fit.pop("m") == "rejected"
                assert set(fit) == set(HONEST)
                assert detail["status"] == "completed"

    asyncio.run(scenario())


def test_the_ids_of_an_unknown_upload_are_recorded_cut_short(tmp_path: pathlib.Path) -> None:
    # An Upload call needs no session: whoever reaches the port must not write megabytes to the
    # store per call through the ids it names.
    long_id = "t" * (1 << 20)

    async def scenario() -> None:
        cfg = run_config(rounds=1, min_fit_sites=1, min_available_sites=1, round_timeout_s=5)
        async with federation(tmp_path, [cfg]) as fed:
            mallory = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), TASK)
            try:
                offer = await asyncio.to_thread(mallory.next_fit)
                for session_id in ("not-a-session", mallory.session_id):
                    receipt = await asyncio.to_thread(
                        mallory.upload, offer, b"x", session_id=session_id, task_id=long_id
                    )
                    assert receipt.code in ("unknown_session", "unknown_task")
                    assert len(receipt.message) < 200
            finally:
                mallory.close()
            rows = fed.services.store._rows("SELECT task_id, message FROM rejections")
            assert len(rows) == 2
            for task_id, message in rows:
                assert task_id == "t" * 64
                assert len(message) < 200

    asyncio.run(scenario())
