"""Compressed uploads between the real server and real agents over loopback gRPC: each codec
carries the vector task's deltas into the same model FedAvg makes of plain uploads, the rounds
record bytes on the wire against the uncompressed size, an async run takes deltas against the
version each site trained from, and hostile encodings are refused while the round goes on."""

from __future__ import annotations

import asyncio
import errno
import json
import pathlib
from typing import Any

import numpy as np
import pytest

from quorum.aggregation.fedbuff import staleness_weight
from quorum.client.compression import Residuals
from quorum.wire import blobs
from quorum.wire.codecs import TopK, make_codec
from tests.hostile_site import HostileSite
from tests.integration.harness import TASK, federation, run_config

SITES = [("a", "delta=0.25,n=10"), ("b", "delta=0.5,n=30")]
PER_ROUND = (0.25 * 10 + 0.5 * 30) / 40


def _final(fed: Any, run_id: str, rounds: int) -> np.ndarray:
    model, _ = fed.services.checkpoints.open(run_id, rounds)
    return np.concatenate([np.asarray(v).reshape(-1) for v in model.params().values()])


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8"])
def test_each_codec_makes_the_model_plain_uploads_make(tmp_path: pathlib.Path, codec: str) -> None:
    async def scenario() -> None:
        cfg = run_config(compression={"upload": codec, "block": 8})
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in SITES:
                fed.add_site(name, data)
            run = await fed.wait_run()
            np.testing.assert_allclose(_final(fed, run["id"], 3), 3 * PER_ROUND, rtol=1e-6)
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/3")
            fits = [p for p in detail["participants"] if p["kind"] == "fit"]
            assert [p["status"] for p in fits] == ["accepted", "accepted"]
            sent, _ = fed.services.checkpoints.open(run["id"], 2)  # round 3 trains it
            assert detail["bytes_in_uncompressed"] == 2 * len(sent)
            encoded = blobs.encode(make_codec(cfg.compression).encode(np.zeros(15)))  # type: ignore[union-attr]
            assert detail["bytes_in"] == 2 * len(encoded)

    asyncio.run(scenario())


def test_central_dp_clips_the_decoded_updates(tmp_path: pathlib.Path) -> None:
    """Each site's decoded delta is clipped to norm 0.25·√15 (a's 0.25 everywhere passes,
    b's 0.5 is halved) and counts once; the noise (z·C = 1e-6·0.97) is far below rtol."""

    async def scenario() -> None:
        clip = 0.25 * 15**0.5
        cfg = run_config(
            compression={"upload": "int8"},
            central_dp={"enabled": True, "noise_multiplier": 1e-6, "clipping_norm": clip},
        )
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in SITES:
                fed.add_site(name, data)
            run = await fed.wait_run()
            np.testing.assert_allclose(_final(fed, run["id"], 3), 3 * 0.25, rtol=1e-4)

    asyncio.run(scenario())


def test_topk_sends_what_it_left_out_in_later_rounds(tmp_path: pathlib.Path) -> None:
    """15 values, k = 5, every site adds 0.5 to each value every round: round 1 sends 0.5 on
    five values; round 2 the ten left out have 1.0 accumulated and five of them go; round 3
    the last five have 1.5. The error feedback shows in the model: 5 values moved by 0.5,
    5 by 1.0 and 5 by 1.5 (what top-k without feedback would have left at 0.5 each round)."""

    async def scenario() -> None:
        cfg = run_config(compression={"upload": "topk", "fraction": 1 / 3})
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in [("a", "delta=0.5,n=10"), ("b", "delta=0.5,n=30")]:
                fed.add_site(name, data)
            run = await fed.wait_run()
            final = np.sort(_final(fed, run["id"], 3))
            np.testing.assert_allclose(final, np.repeat([0.5, 1.0, 1.5], 5), rtol=1e-6)

    asyncio.run(scenario())


def test_an_accepted_update_whose_residual_cannot_be_kept_is_not_reported_failed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(self: Residuals, run_id: str, round_no: int, residual: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Residuals, "save", disk_full)

    async def scenario() -> dict[str, Any]:
        cfg = run_config(rounds=1, compression={"upload": "topk", "fraction": 0.5})
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in SITES:
                fed.add_site(name, data)
            run = await fed.wait_run()
            detail: dict[str, Any] = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            return detail

    detail = asyncio.run(scenario())
    fits = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
    assert fits == {"a": "accepted", "b": "accepted"}
    assert detail["rejected_uploads"] == []  # no report of a failure after the receipt
    assert "event=task_failed" not in caplog.text
    assert caplog.text.count("event=residual_not_saved") == 2


def test_an_async_run_decodes_each_delta_against_the_version_its_site_trained_from(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        deltas = {"a": 1.0, "b": 2.0, "c": -1.0}
        cfg = run_config(
            mode="async",
            rounds=4,
            buffer_size=2,
            min_fit_sites=1,
            min_available_sites=1,
            compression={"upload": "int8"},
        )
        async with federation(tmp_path, [cfg]) as fed:
            for name, delta in deltas.items():
                fed.add_site(name, f"delta={delta},n={1 + len(name)},sleep=0.02")
            run = await fed.wait_run(timeout=60)
            expected = 0.0
            for r in range(1, 5):
                detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/{r}")
                applied = [
                    p
                    for p in detail["participants"]
                    if p["kind"] == "fit" and p["status"] == "accepted"
                ]
                expected += sum(
                    staleness_weight(p["staleness"], 0.5) * p["num_examples"] * deltas[p["site"]]
                    for p in applied
                ) / sum(p["num_examples"] for p in applied)
            np.testing.assert_allclose(_final(fed, run["id"], 4), expected, rtol=1e-5)

    asyncio.run(scenario())


def _hostile_uploads(site: HostileSite) -> list[tuple[str, str]]:
    """Answers three fit offers with bad top-k encodings, the fourth with a good one."""
    codes = []
    codec = TopK(0.5)
    for bad in ("plain", "count", "nan"):
        offer = site.next_fit()
        assert json.loads(offer.config_json)["compression"]["upload"] == "topk"
        model = site.download(offer.model_digest)
        numel = blobs.read_layout(model).numel
        tensors = codec.encode(np.ones(numel))
        if bad == "plain":  # the trained model as it is: not what the run takes
            data = model
        elif bad == "count":
            tensors["mask"] = np.full_like(tensors["mask"], 0xFF)
            data = blobs.encode(tensors)
        else:
            tensors["values"][0] = np.nan
            data = blobs.encode(tensors)
        receipt = site.upload(offer, data)
        assert not receipt.accepted
        codes.append((receipt.code, receipt.message))
    offer = site.next_fit()
    model = site.download(offer.model_digest)
    good = blobs.encode(codec.encode(np.ones(blobs.read_layout(model).numel)))
    assert site.upload(offer, good).accepted
    site.close()
    return codes


def test_hostile_encodings_are_refused_and_the_round_goes_on(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        cfg = run_config(
            rounds=4,
            min_fit_sites=2,
            min_available_sites=3,
            compression={"upload": "topk", "fraction": 0.5},
        )
        async with federation(tmp_path, [cfg]) as fed:
            for name, data in SITES:
                fed.add_site(name, data)
            mallory = await asyncio.to_thread(HostileSite, fed.address, fed.register("m"), TASK)
            codes = await asyncio.to_thread(_hostile_uploads, mallory)
            run = await fed.wait_run(timeout=60)
            assert [c for c, _ in codes] == ["layout_mismatch", "bad_encoding", "non_finite"]
            assert "the upload is a whole model; this run takes topk-encoded" in codes[0][1]
            assert "marks 16 positions for 8 values" in codes[1][1]
            for r, code in enumerate(["layout_mismatch", "bad_encoding", "non_finite"], 1):
                detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/{r}")
                assert [x["code"] for x in detail["rejected_uploads"]] == [code]
                assert detail["metrics"]["fit"]["num_sites"] == 2
            last = await fed.api(f"/api/v1/runs/{run['id']}/rounds/4")
            assert last["metrics"]["fit"]["num_sites"] == 3

    asyncio.run(scenario())
