"""Secure aggregation (SecAgg+) rounds between the real server and real agents over loopback:
the sum is right, or the round aborts with its reason, whatever the sites or a relay do."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from typing import Any

import numpy as np
import pytest

from quorum.client.agent import SimulatedCrash, StageHook
from quorum.errors import UploadRejected
from quorum.privacy.secagg import ServerRound, encode_update, error_bound
from quorum.proto import federation_pb2 as pb
from quorum.server.secure_fit import SecureFit, SpooledMask
from quorum.server.sessions import Session
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobWriter
from tests.integration.harness import Federation, federation, first_aborted, run_config
from tests.vector_task import expected_fedavg

SECAGG = {"enabled": True, "threshold": 3, "clip_range": 4.0, "quantization_bits": 24}
SITES = {"a": (0.5, 10), "b": (1.0, 20), "c": (-0.25, 30), "d": (0.75, 40), "e": (0.1, 50)}


def crash_at(round_no: int, stage: str) -> StageHook:
    def hook(r: int, s: str) -> None:
        if (r, s) == (round_no, stage):
            raise SimulatedCrash(f"{r}:{s}")

    return hook


def start(fed: Federation, crashes: dict[str, StageHook] | None = None) -> None:
    for name, (delta, n) in SITES.items():
        fed.add_site(name, f"delta={delta},n={n}", on_stage=(crashes or {}).get(name))


def final_value(fed: Federation, run_id: str, round_no: int) -> np.ndarray:
    model, _ = fed.services.checkpoints.open(run_id, round_no)
    return model.flat()


def assert_fedavg_of(value: np.ndarray, names: list[str]) -> None:
    want = expected_fedavg(1, [SITES[n] for n in names])
    # Each site's (weight share x delta) is quantised, then the sum is divided by the total
    # weight share: the mean is off by at most the bound scaled by max_weight / total weight.
    bound = error_bound(SECAGG["clip_range"], SECAGG["quantization_bits"], len(names))
    total = sum(SITES[n][1] for n in names)
    np.testing.assert_allclose(value, want, rtol=0, atol=bound * 1000 / total + 1e-6)


def one_round(**secagg: Any) -> Any:
    return run_config(
        rounds=1,
        min_fit_sites=3,
        min_available_sites=5,
        fraction_evaluate=0.0,
        secagg={**SECAGG, "stage_timeout_s": 5, **secagg},
    )


def test_secure_rounds_give_fedavg_and_the_server_never_holds_an_update(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[np.ndarray] = []
    original = ServerRound.add_masked

    def spy(self: ServerRound, index: int, vector: SpooledMask) -> None:
        # Read from the upload's spool a block at a time, never whole.
        assert isinstance(vector, SpooledMask)
        received.append(np.concatenate([values.copy() for _, values in vector.blocks()]))
        original(self, index, vector)

    monkeypatch.setattr(ServerRound, "add_masked", spy)

    async def scenario() -> None:
        config = one_round().model_copy(update={"rounds": 2})
        async with federation(tmp_path, [config]) as fed:
            start(fed)
            run = await fed.wait_run()
            value = final_value(fed, run["id"], 2)
            want = expected_fedavg(2, list(SITES.values()))
            np.testing.assert_allclose(value, want, atol=2e-4)
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/2")
            report = detail["secagg"]
            assert report["recovered"] is True and report["survivors"] == 5
            assert [s["stage"] for s in report["stages"]] == [
                "advertise-keys",
                "share-keys",
                "masked-input",
                "unmask",
            ]
            assert all(s["answered"] == 5 and s["dropped"] == [] for s in report["stages"])
            assert detail["metrics"]["fit"]["num_examples"] == 150
            fits = [p for p in detail["participants"] if p["kind"] == "fit"]
            assert all(p["status"] == "accepted" for p in fits)
            # The task book remembers the closed phases (to refuse late answers), not their
            # sums: no SecAgg handler it reaches keeps the vector its round summed in.
            handlers = {
                id(t.phase.handler): t.phase.handler for t in fed.services.book._tasks.values()
            }
            secure = [h for h in handlers.values() if isinstance(h, SecureFit)]
            assert len(secure) == 2
            assert all(h.sum_vector is None and h.server is None for h in secure)

    asyncio.run(scenario())
    # What the server received: 5 sites x 2 rounds of masked vectors, none of them any site's
    # quantised update (they look uniformly random over the 32-bit ring).
    assert len(received) == 10
    plain = [encode_update(np.full(15, delta), n, 4.0, 24, 1000)[0] for delta, n in SITES.values()]
    for vector in received:
        assert vector.dtype == np.uint32 and vector.size == 16
        for update in plain:
            assert np.count_nonzero(vector == update) <= 1
        assert vector.astype(np.float64).std() > 2**28  # spread over the ring, not near 2^23


@pytest.mark.parametrize("stage", ["advertise-keys", "share-keys", "masked-input", "unmask"])
def test_a_dropout_at_each_stage_still_recovers_the_sum(tmp_path: pathlib.Path, stage: str) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            start(fed, {"c": crash_at(1, stage)})
            run = await fed.wait_run()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            report = detail["secagg"]
            assert report["recovered"] is True
            stages = {s["stage"]: s for s in report["stages"]}
            assert [d["site"] for d in stages[stage]["dropped"]] == ["c"]
            # A site that dies after its masked vector was summed is still in the sum: the
            # others reveal its self-mask seed. Earlier, its pairwise masks are removed.
            summed = list(SITES) if stage == "unmask" else [n for n in SITES if n != "c"]
            assert report["survivors"] == len(summed)
            assert_fedavg_of(final_value(fed, run["id"], 1), summed)

    asyncio.run(scenario())


def test_up_to_n_minus_t_dropouts_at_different_stages(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            start(fed, {"a": crash_at(1, "share-keys"), "e": crash_at(1, "masked-input")})
            run = await fed.wait_run()
            report = (await fed.api(f"/api/v1/runs/{run['id']}/rounds/1"))["secagg"]
            assert report["recovered"] is True and report["survivors"] == 3
            assert_fedavg_of(final_value(fed, run["id"], 1), ["b", "c", "d"])

    asyncio.run(scenario())


def test_a_cohort_below_the_threshold_aborts_the_round_and_the_run_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        config = one_round(threshold=4)
        async with federation(tmp_path, [config]) as fed:
            start(fed, {"b": crash_at(1, "masked-input"), "d": crash_at(1, "masked-input")})
            first = await first_aborted(fed)
            assert "secure aggregation" in first["abort_reason"]
            assert "threshold" in first["abort_reason"]
            assert first["secagg"]["recovered"] is False
            masked = next(s for s in first["secagg"]["stages"] if s["stage"] == "masked-input")
            assert sorted(d["site"] for d in masked["dropped"]) == ["b", "d"]
            # Two fresh sites join: the next attempt of round 1 has enough.
            fed.add_site("f", "delta=0.5,n=10")
            fed.add_site("g", "delta=0.5,n=10")
            run = await fed.wait_run()
            assert run["rounds_completed"] == 1

    asyncio.run(scenario())


def _relay_tamper(monkeypatch: pytest.MonkeyPatch, method: str, change: Any) -> None:
    """A malicious relay: rewrites what the server relays after one of its stages."""
    original = getattr(ServerRound, method)

    def relay(self: ServerRound) -> Any:
        return change(original(self))

    monkeypatch.setattr(ServerRound, method, relay)


def test_a_tampered_share_ciphertext_is_detected_and_the_sum_stays_right(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flip_first_share_to_site_0(routed: dict[int, list[Any]]) -> dict[int, list[Any]]:
        share = routed[0][0]
        bad = bytes([share.ciphertext[0] ^ 1]) + share.ciphertext[1:]
        routed[0][0] = dataclasses.replace(share, ciphertext=bad)
        return routed

    _relay_tamper(monkeypatch, "close_shares", flip_first_share_to_site_0)

    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            start(fed)
            run = await fed.wait_run()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            report = detail["secagg"]
            assert report["recovered"] is True and report["survivors"] == 4
            masked = next(s for s in report["stages"] if s["stage"] == "masked-input")
            assert [d["site"] for d in masked["dropped"]] == ["a"]
            assert "authentication" in masked["dropped"][0]["reason"]
            assert_fedavg_of(final_value(fed, run["id"], 1), ["b", "c", "d", "e"])

    asyncio.run(scenario())


def test_a_key_substituted_by_the_relay_is_refused_by_every_neighbour(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quorum.privacy.secagg import generate_keypair

    _, attacker_public = generate_keypair()

    def substitute_site_2(relayed: dict[int, list[Any]]) -> dict[int, list[Any]]:
        return {
            i: [
                dataclasses.replace(k, mask_public=attacker_public) if k.index == 2 else k
                for k in keys
            ]
            for i, keys in relayed.items()
        }

    _relay_tamper(monkeypatch, "close_advertise", substitute_site_2)

    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            start(fed)
            detail = await first_aborted(fed)
            assert "threshold" in detail["abort_reason"]
            share = next(s for s in detail["secagg"]["stages"] if s["stage"] == "share-keys")
            # Every neighbour of site 2 ("c") refused the substituted key.
            assert sorted(d["site"] for d in share["dropped"]) == ["a", "b", "d", "e"]
            assert all("signature" in d["reason"] for d in share["dropped"])

    asyncio.run(scenario())


def _send_site_e_another_model(
    monkeypatch: pytest.MonkeyPatch, folder: pathlib.Path
) -> dict[str, Any]:
    """Makes the server offer site "e" a different global model from the rest of its cohort."""
    server: dict[str, Any] = {}
    original_send = Session.send

    def send(self: Session, message: pb.ServerMessage) -> None:
        if self.site == "e" and message.WhichOneof("kind") == "task":
            with BlobWriter(folder / "other.safetensors") as writer:
                other = {"w": np.ones((4, 3), np.float32), "b": np.ones(3, np.float32)}
                blobs.write(other, writer)
                served = writer.finish()
            message.task.model_digest = server["services"].blobs.put(served)
            message.task.model_size = len(served)
        original_send(self, message)

    monkeypatch.setattr(Session, "send", send)
    return server


def test_a_site_sent_another_global_model_is_refused_at_advertise(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _send_site_e_another_model(monkeypatch, tmp_path)

    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            server["services"] = fed.services
            start(fed)
            run = await fed.wait_run()
            report = (await fed.api(f"/api/v1/runs/{run['id']}/rounds/1"))["secagg"]
            advertise = next(s for s in report["stages"] if s["stage"] == "advertise-keys")
            # The server checks each site's signed keys against the model it announced.
            assert [d["site"] for d in advertise["dropped"]] == ["e"]
            assert "signature" in advertise["dropped"][0]["reason"]
            assert report["recovered"] is True and report["survivors"] == 4
            assert_fedavg_of(final_value(fed, run["id"], 1), ["a", "b", "c", "d"])

    asyncio.run(scenario())


def test_without_the_servers_check_the_cohort_itself_catches_another_model(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that relays keys unchecked (as a malicious one would): the sites' own check of
    # their neighbours' signatures is what stops the round.
    monkeypatch.setattr("quorum.privacy.secagg.server.verify_keys", lambda *args: None)
    server = _send_site_e_another_model(monkeypatch, tmp_path)

    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            server["services"] = fed.services
            start(fed)
            detail = await first_aborted(fed)
            share = next(s for s in detail["secagg"]["stages"] if s["stage"] == "share-keys")
            assert sorted(d["site"] for d in share["dropped"]) == ["a", "b", "c", "d", "e"]
            assert all("signature" in d["reason"] for d in share["dropped"])

    asyncio.run(scenario())


def test_a_site_silent_past_the_stage_deadline_is_a_dropout(tmp_path: pathlib.Path) -> None:
    hold = tmp_path / "hold"  # e's fit waits while it exists: e is silent until released
    hold.touch()

    async def scenario() -> None:
        config = one_round().model_copy(update={"round_timeout_s": 3.0})
        async with federation(tmp_path, [config]) as fed:
            try:
                for name, (delta, n) in SITES.items():
                    held = f",hold={hold}" if name == "e" else ""
                    fed.add_site(name, f"delta={delta},n={n}{held}")
                run = await fed.wait_run()
            finally:
                hold.unlink()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            masked = next(s for s in detail["secagg"]["stages"] if s["stage"] == "masked-input")
            assert masked["dropped"] == [
                {"site": "e", "reason": "no answer before the masked-input deadline"}
            ]
            assert 2.9 < masked["duration_s"] < 10
            assert_fedavg_of(final_value(fed, run["id"], 1), ["a", "b", "c", "d"])

    asyncio.run(scenario())


def test_a_second_upload_after_the_masked_vector_leaves_the_site_in_the_round(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A retried upload of a's masked vector is refused as a duplicate: the first one is in,
    # so a still owes (and sends) its unmask shares, and is no dropout.
    accept = SecureFit.accept

    async def and_again(
        self: SecureFit, task: Any, header: Any, upload: Any, accepted: Any
    ) -> None:
        await accept(self, task, header, upload, accepted)
        if task.site == "a":
            session = self.services.sessions.get(task.session_id)
            self.services.book.refuse(
                session, task.id, UploadRejected("duplicate", "already answered")
            )

    monkeypatch.setattr(SecureFit, "accept", and_again)

    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            start(fed)
            run = await fed.wait_run()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            unmask = next(s for s in detail["secagg"]["stages"] if s["stage"] == "unmask")
            assert (unmask["answered"], unmask["dropped"]) == (5, [])
            assert "duplicate" in [r["code"] for r in detail["rejected_uploads"]]
            assert_fedavg_of(final_value(fed, run["id"], 1), list(SITES))

    asyncio.run(scenario())


def test_a_site_that_reported_a_failure_is_out_for_good(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a reports its task failed, then sends its keys all the same: they are refused, and the
    # round sums the other four.
    on_secagg = SecureFit.on_secagg

    def failed_first(self: SecureFit, task: Any, reply: pb.SecAggReply) -> None:
        if task.site == "a" and reply.WhichOneof("stage") == "keys":
            session = self.services.sessions.get(task.session_id)
            assert session is not None
            self.services.book.on_result(
                session,
                pb.TaskResult(task_id=task.id, status=pb.RESULT_STATUS_FAILED, error="x"),
            )
        on_secagg(self, task, reply)

    monkeypatch.setattr(SecureFit, "on_secagg", failed_first)

    async def scenario() -> None:
        async with federation(tmp_path, [one_round()]) as fed:
            start(fed)
            run = await fed.wait_run()
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            refused = [(r["site"], r["code"]) for r in detail["rejected_uploads"]]
            assert ("a", "dropped_out") in refused
            advertise = detail["secagg"]["stages"][0]
            assert advertise["answered"] == 4
            assert_fedavg_of(final_value(fed, run["id"], 1), ["b", "c", "d", "e"])

    asyncio.run(scenario())
