"""Gossip rounds between the real server and real agents over loopback: every site ends with
exactly the model its mixing weights give, the relay only ever holds ciphertext, a tampered
ciphertext is caught by its receiver, and a site that misses a round is mixed around."""

from __future__ import annotations

import asyncio
import functools
import math
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from quorum.aggregation import gossip
from quorum.client import gossip as site_gossip
from quorum.client.agent import Backoff, SimulatedCrash, SiteAgent, StageHook
from quorum.client.gossip_models import GossipModels
from quorum.errors import BlobError
from quorum.privacy import gossip_channel as channel
from quorum.proto import federation_pb2 as pb
from quorum.server.gossip_relay import GossipRound, Parcel
from quorum.server.phases import PendingTask
from quorum.server.validation import Received
from quorum.wire import blobs
from tests.integration.harness import TASK, Federation, federation, run_config
from tests.vector_task import task as vector_task

SITES = {"a": 0.5, "b": 1.0, "c": -0.25, "d": 0.75}
NUMEL = 15  # the vector task's model: w (4, 3) and b (3,)


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an async test in its own event loop (fixtures pass through)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def gossip_run(**overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "mode": "gossip",
        "topology": "exponential",
        "rounds": 3,
        "min_fit_sites": 4,
        "min_available_sites": 4,
        "gossip_stage_timeout_s": 5,
        "round_timeout_s": 10,
    }
    return run_config(**{**settings, **overrides})


def start(fed: Federation, hooks: dict[str, StageHook] | None = None) -> dict[str, GossipModels]:
    """One agent per site, each with its own model store (to read the models afterwards)."""
    models = {}
    for name, delta in SITES.items():
        models[name] = GossipModels()
        agent = SiteAgent(
            fed.address,
            fed.register(name),
            TASK,
            vector_task.site(f"delta={delta},n=10", "cpu", 0),
            backoff=Backoff(base_s=0.05, cap_s=0.5),
            on_stage=(hooks or {}).get(name),
            gossip_models=models[name],
        )
        fed.agents.append(asyncio.create_task(agent.run(fed.stop)))
    return models


def site_value(models: GossipModels, run_id: str, round_no: int) -> np.ndarray:
    kept = models.latest_before(run_id, round_no + 1)
    assert kept is not None and kept[0] == round_no
    return blobs.as_flat(kept[1], blobs.read_layout(kept[1]))


def expected(rounds: int, missing: dict[int, set[str]] | None = None) -> dict[str, float]:
    """Each site's value after `rounds` gossip rounds of the vector task: train (+delta), then
    mix with the exponential graph's weights, renormalised around sites missing from a round."""
    values = dict.fromkeys(SITES, 0.0)
    names = sorted(SITES)
    for r in range(1, rounds + 1):
        trained = {n: values[n] + SITES[n] for n in names}
        gone = (missing or {}).get(r, set())
        weights = gossip.without(
            gossip.mixing("exponential", len(names), r), {names.index(n) for n in gone}
        )
        for i, row in weights.items():
            values[names[i]] = sum(w * trained[names[j]] for j, w in row.items())
        for n in gone:
            values[n] = trained[n] - SITES[n]  # a site that died keeps its model of before
    return values


@in_loop
async def test_gossip_sites_mix_exactly_and_the_relay_holds_only_ciphertext(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[bytes] = []
    original = GossipRound.accept

    async def spy(
        self: GossipRound, task: Any, header: Any, upload: Received, accepted: Any
    ) -> None:
        await original(self, task, header, upload, accepted)
        stored = self.parcels[(self.index[task.id], header.gossip.receiver)]
        assert stored.data == upload.read()  # kept exactly as the sender uploaded it
        held.append(stored.data)

    monkeypatch.setattr(GossipRound, "accept", spy)
    sealed: list[bytes] = []  # the models the sites sealed, as the sites had them
    really_seal = channel.seal

    def seal(key: bytes, model: bytes, associated: bytes) -> bytes:
        sealed.append(model)
        return really_seal(key, model, associated)

    monkeypatch.setattr(site_gossip.channel, "seal", seal)
    async with federation(tmp_path, [gossip_run()]) as fed:
        models = start(fed)
        run = await fed.wait_run(timeout=60)
        run_id = run["id"]
        want = expected(3)
        for name in SITES:
            value = site_value(models[name], run_id, 3)
            np.testing.assert_allclose(value, want[name], atol=1e-5)
        # One parcel per site per round (each site sends to one peer on the exponential graph).
        assert len(held) == len(sealed) == 4 * 3
        for data in held:
            with pytest.raises(BlobError):
                blobs.read_layout(data)  # not a model
            for model in sealed:
                assert model not in data  # no model, whole or embedded, in what the relay holds
        detail = await fed.api(f"/api/v1/runs/{run_id}/rounds/3")
        assert detail["status"] == "completed"
        fits = [p for p in detail["participants"] if p["kind"] == "fit"]
        assert {p["site"]: p["status"] for p in fits} == dict.fromkeys(SITES, "ok")
        # each site sent one parcel and downloaded one, of the same size (same layout)
        assert all(p["bytes_out"] == p["bytes_in"] == fits[0]["bytes_in"] > 0 for p in fits)
        # Round 3 (shift 1): a receives from b, whose trained model differs by 0.5 everywhere.
        before = expected(2)
        a = next(p for p in fits if p["site"] == "a")
        trained_gap = abs((before["a"] + SITES["a"]) - (before["b"] + SITES["b"]))
        assert a["metrics"]["distance_to:b"] == pytest.approx(trained_gap * math.sqrt(NUMEL), 1e-4)
        assert a["metrics"]["accuracy"] == 0.5
        gossip_metrics = detail["metrics"]["gossip"]
        assert gossip_metrics["skipped_pairs"] == 0
        assert gossip_metrics["mixed_pairs"] == 4
        assert gossip_metrics["consensus_distance"] > 0
        assert detail["metrics"]["evaluate"]["accuracy_mean_sites"] == 0.5
        assert detail["rejected_uploads"] == []
        model = await fed.api(f"/api/v1/runs/{run_id}")
        assert model["status"] == "completed"


@in_loop
async def test_a_tampered_ciphertext_is_detected_and_the_pair_skipped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = GossipRound.accept

    async def tamper(
        self: GossipRound, task: Any, header: Any, upload: Received, accepted: Any
    ) -> None:
        await original(self, task, header, upload, accepted)
        pair = (self.index[task.id], header.gossip.receiver)
        if self.phase.round == 1 and pair == (1, 0):  # b's model on its way to a
            flipped = bytearray(self.parcels[pair].data)
            flipped[len(flipped) // 2] ^= 0x01
            # A relay that alters a parcel announces the digest of what it holds.
            self.parcels[pair] = Parcel(blobs.digest(flipped), bytes(flipped))

    monkeypatch.setattr(GossipRound, "accept", tamper)
    async with federation(tmp_path, [gossip_run(rounds=1)]) as fed:
        models = start(fed)
        run = await fed.wait_run(timeout=60)
        detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
        assert detail["status"] == "completed"
        [rejection] = detail["rejected_uploads"]
        assert rejection["code"] == "relay_tampered"
        assert rejection["site"] == "a"
        assert "model of b" in rejection["message"]
        assert detail["metrics"]["gossip"]["skipped_pairs"] == 1
        # a mixed with nobody: its row renormalised over itself.
        np.testing.assert_allclose(site_value(models["a"], run["id"], 1), SITES["a"], atol=1e-6)
        # The other pairs went through: b received c's model.
        np.testing.assert_allclose(
            site_value(models["b"], run["id"], 1), (SITES["b"] + SITES["c"]) / 2, atol=1e-6
        )
        events = await fed.api("/api/v1/events")
        assert any(e["kind"] == "gossip_pair_skipped" for e in events)


def crash_at(round_no: int, stage: str) -> StageHook:
    def hook(r: int, s: str) -> None:
        if (r, s) == (round_no, stage):
            raise SimulatedCrash(f"{r}:{s}")

    return hook


@in_loop
async def test_a_site_that_misses_a_round_is_mixed_around(tmp_path: pathlib.Path) -> None:
    # c dies after training in round 2, before it sends: under shift 2 a receives from c.
    run = gossip_run(rounds=2, min_fit_sites=3, min_available_sites=4)
    async with federation(tmp_path, [run]) as fed:
        models = start(fed, {"c": crash_at(2, "gossip-send")})
        record = await fed.wait_run(timeout=60)
        detail = await fed.api(f"/api/v1/runs/{record['id']}/rounds/2")
        assert detail["status"] == "completed"
        fits = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
        assert fits["c"] in ("lost", "timed_out")
        assert [fits[n] for n in ("a", "b", "d")] == ["ok", "ok", "ok"]
        skipped = [r["code"] for r in detail["rejected_uploads"] if r["site"] == "a"]
        # a's own parcel for c may still be on its way when c's drop closes the send stage:
        # it is then refused as late, and a stays in the round all the same
        assert "neighbour_missing" in skipped
        assert set(skipped) <= {"neighbour_missing", "parcel_late"}
        want = expected(2, missing={2: {"c"}})
        for name in ("a", "b", "d"):
            value = site_value(models[name], record["id"], 2)
            np.testing.assert_allclose(value, want[name], atol=1e-5)


@in_loop
async def test_the_keys_stage_does_not_wait_for_a_site_that_left(tmp_path: pathlib.Path) -> None:
    # c dies as round 2 begins, before it sends its round key: the stage's deadline (60 s) is
    # not waited out, since c's task ended as it left.
    run = gossip_run(rounds=2, min_fit_sites=3, min_available_sites=4, gossip_stage_timeout_s=60)
    async with federation(tmp_path, [run]) as fed:
        start(fed, {"c": crash_at(2, "gossip-keys")})
        record = await fed.wait_run(timeout=120)
        detail = await fed.api(f"/api/v1/runs/{record['id']}/rounds/2")
        fits = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
        assert fits == {"a": "ok", "b": "ok", "c": "lost", "d": "ok"}
        assert detail["duration_s"] < 40, detail["duration_s"]


def _hostile_report(**change: Any) -> Callable[[pb.GossipReport, list[int]], None]:
    def edit(report: pb.GossipReport, senders: list[int]) -> None:
        for field_name, value in change.items():
            if field_name == "skipped":
                report.skipped.extend(value(senders))
            else:
                setattr(report, field_name, value)

    return edit


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"num_examples": 2**64 - 1}, "num_examples_out_of_range"),  # past the store's integers
        ({"duration_s": math.inf}, "bad_duration"),
        (
            {"skipped": lambda senders: [pb.GossipSkip(index=senders[0], reason="x")] * 2},
            "gossip_protocol",
        ),
    ],
)
@in_loop
async def test_a_hostile_report_is_refused_by_name_and_the_round_goes_on(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], code: str
) -> None:
    hostile(monkeypatch, "a", _hostile_report(**change))
    async with federation(tmp_path, [gossip_run(rounds=1, min_fit_sites=3)]) as fed:
        start(fed)
        record = await fed.wait_run(timeout=60)
        detail = await fed.api(f"/api/v1/runs/{record['id']}/rounds/1")
        refused = [r["code"] for r in detail["rejected_uploads"] if r["site"] == "a"]
        assert code in refused
        fits = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
        assert fits["a"] != "ok" and [fits[n] for n in ("b", "c", "d")] == ["ok", "ok", "ok"]


@in_loop
async def test_a_skip_under_a_code_of_the_sites_own_making_is_recorded_as_skipped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The codes are a metric's labels: a site cannot add one per skip.
    def made_up(report: pb.GossipReport, senders: list[int]) -> None:
        del report.skipped[:]
        report.skipped.append(pb.GossipSkip(index=senders[0], reason="made_up_code: whatever"))

    hostile(monkeypatch, "a", made_up)
    async with federation(tmp_path, [gossip_run(rounds=1)]) as fed:
        start(fed)
        record = await fed.wait_run(timeout=60)
        detail = await fed.api(f"/api/v1/runs/{record['id']}/rounds/1")
        skips = [r for r in detail["rejected_uploads"] if r["site"] == "a"]
        assert [r["code"] for r in skips] == ["skipped"]
        assert skips[0]["message"].endswith("made_up_code: whatever")


def hostile(
    monkeypatch: pytest.MonkeyPatch,
    site: str,
    edit: Callable[[pb.GossipReport, list[int]], None],
) -> None:
    """`site`'s report reaches the relay as `edit` makes it (what a hostile agent would send)."""
    receive = GossipRound.on_gossip

    def edited(self: GossipRound, task: PendingTask, reply: pb.GossipReply) -> None:
        i = self.index[task.id]
        if reply.WhichOneof("stage") == "report" and self.names[i] == site:
            edit(reply.report, self.senders[i])
        receive(self, task, reply)

    monkeypatch.setattr(GossipRound, "on_gossip", edited)


@in_loop
async def test_a_parcel_the_relay_no_longer_holds_is_skipped_and_the_site_stays(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # b's model to a is announced in a's inbox, then not served (NOT_FOUND): a skips that pair
    # and mixes the rest; its session goes on.
    parcel_for = GossipRound.parcel_for

    def lost(self: GossipRound, session: Any, digest: str) -> bytes | None:
        held = self.parcels.get((1, 0))
        if held is not None and held.digest == digest:
            return None
        return parcel_for(self, session, digest)

    monkeypatch.setattr(GossipRound, "parcel_for", lost)
    async with federation(tmp_path, [gossip_run(rounds=1)]) as fed:
        start(fed)
        run = await fed.wait_run(timeout=60)
        detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
        fits = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
        assert fits == {"a": "ok", "b": "ok", "c": "ok", "d": "ok"}
        [skip] = detail["rejected_uploads"]
        assert (skip["site"], skip["code"]) == ("a", "relay_failed")
        assert "no longer holds it" in skip["message"]
    assert "event=disconnected" not in caplog.text
