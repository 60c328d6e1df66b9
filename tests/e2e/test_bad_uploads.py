"""Every kind of bad upload, sent to a server started through the CLI by a hand-written site.

Each is refused with its code, recorded against the round, never aggregated; the round goes on
with the honest sites, and the final model proves that nothing bad was folded in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from quorum.proto import federation_pb2 as pb
from quorum.server.checkpoints import Checkpoints
from quorum.wire import blobs
from tests.e2e.cli import Deployment, run_settings
from tests.hostile_site import HostileSite

Upload = Callable[[HostileSite, pb.TaskOffer, bytes], pb.UploadReceipt]


def _shifted(model: bytes, **changes: np.ndarray) -> bytes:
    params = {k: v.copy() for k, v in blobs.decode(model).items()}
    params.update(changes)
    return blobs.encode(params)


def _nan(model: bytes) -> bytes:
    params = {k: v.copy() for k, v in blobs.decode(model).items()}
    params["b"][1] = np.nan
    return blobs.encode(params)


def _garbage_with_valid_digest(site: HostileSite, offer: pb.TaskOffer, model: bytes) -> Any:
    junk = b"\xff" * len(model)
    return site.upload(offer, junk)


def _oversized_stream(site: HostileSite, offer: pb.TaskOffer, model: bytes) -> Any:
    big = model + b"\0" * 1000
    return site.upload(offer, big, size=len(model), digest=blobs.digest(model))


# (code, how to send it) — each of these answers the task, so each takes one round.
ATTRIBUTABLE: list[tuple[str, Upload]] = [
    ("digest_mismatch", lambda s, o, m: s.upload(o, m, digest="0" * 64)),
    # A SHA-256 declared as the BLAKE3 the header names.
    ("digest_mismatch", lambda s, o, m: s.upload(o, m, digest_algorithm="blake3")),
    ("unknown_digest", lambda s, o, m: s.upload(o, m, digest_algorithm="md5")),
    ("layout_mismatch", lambda s, o, m: s.upload(o, _shifted(m, extra=np.zeros(2, np.float32)))),
    ("layout_mismatch", lambda s, o, m: s.upload(o, _shifted(m, w=np.zeros((3, 4), np.float32)))),
    ("layout_mismatch", lambda s, o, m: s.upload(o, _shifted(m, b=np.zeros(3, np.float64)))),
    ("non_finite", lambda s, o, m: s.upload(o, _nan(m))),
    ("oversized", lambda s, o, m: s.upload(o, m, size=len(m) + 10_000_000)),
    ("oversized", _oversized_stream),
    ("num_examples_out_of_range", lambda s, o, m: s.upload(o, m, num_examples=0)),
    ("num_examples_out_of_range", lambda s, o, m: s.upload(o, m, num_examples=10**12)),
    ("wrong_run", lambda s, o, m: s.upload(o, m, run_id="run-somebody-else")),
    ("wrong_round", lambda s, o, m: s.upload(o, m, round=o.round + 1)),
    ("malformed_blob", _garbage_with_valid_digest),
    ("bad_metrics", lambda s, o, m: s.upload(o, m, metrics_json='{"loss": "low"}')),
    ("bad_duration", lambda s, o, m: s.upload(o, m, duration_s=float("inf"))),
]


@pytest.mark.slow
def test_each_bad_upload_is_refused_and_never_aggregated(deployment: Deployment) -> None:
    d = deployment
    rounds = len(ATTRIBUTABLE) + 1
    d.run = None
    d.start_server()
    d.start_site("honest-1", "delta=1.0,n=1")
    d.start_site("honest-2", "delta=1.0,n=1")
    d.wait_connected({"honest-1", "honest-2"})
    mallory = d.join_hostile("mallory")
    d.wait_connected({"honest-1", "honest-2", "mallory"})
    run = d.submit(
        run_settings(rounds=rounds, min_fit_sites=2, min_available_sites=3, round_timeout_s=20.0)
    )
    try:
        first = mallory.next_fit()
        model = mallory.download(first.model_digest)
        # Refusals that name no task of this session do not end the task: only counted.
        receipt = mallory.upload(first, model, session_id="not-a-session")
        assert (receipt.accepted, receipt.code) == (False, "unknown_session")
        receipt = mallory.upload(first, model, task_id="not-a-task")
        assert (receipt.accepted, receipt.code) == (False, "unknown_task")

        offer = first
        for i, (code, send) in enumerate(ATTRIBUTABLE):
            if i:
                offer = mallory.next_fit()
                model = mallory.download(offer.model_digest)
            receipt = send(mallory, offer, model)
            assert (receipt.accepted, receipt.code) == (False, code), receipt.message
            assert receipt.message

        last = mallory.next_fit()
        model = mallory.download(last.model_digest)
        good = _shifted(model, **{k: v + np.float32(4.0) for k, v in blobs.decode(model).items()})
        assert mallory.upload(last, good, num_examples=2).accepted
        again = mallory.upload(last, good, num_examples=2)
        assert (again.accepted, again.code) == (False, "duplicate")
    finally:
        mallory.close()

    done = d.wait_run(timeout=60)
    assert done["rounds_completed"] == rounds
    for i, (code, _) in enumerate(ATTRIBUTABLE):
        detail = d.get(f"/api/v1/runs/{run['id']}/rounds/{i + 1}")
        codes = [r["code"] for r in detail["rejected_uploads"]]
        assert code in codes, (i + 1, codes)
        status = {p["site"]: p["status"] for p in detail["participants"] if p["kind"] == "fit"}
        assert status == {"honest-1": "accepted", "honest-2": "accepted", "mallory": "rejected"}
        assert detail["metrics"]["fit"]["num_sites"] == 2
    first_round = d.get(f"/api/v1/runs/{run['id']}/rounds/1")
    assert {"unknown_session", "unknown_task"} <= {
        r["code"] for r in first_round["rejected_uploads"]
    }
    final = d.get(f"/api/v1/runs/{run['id']}/rounds/{rounds}")
    assert "duplicate" in [r["code"] for r in final["rejected_uploads"]]

    # Honest sites add 1.0 per round; mallory's one good update (+4, weight 2) is in the last.
    model, _ = Checkpoints(d.state_dir / "checkpoints").open(run["id"], rounds)
    want = (rounds - 1) * 1.0
    want += (1.0 + 1.0 + 2 * (want + 4.0 - want)) / 4
    for value in model.params().values():
        np.testing.assert_allclose(value, want, rtol=1e-6)
    assert json.dumps(done)  # the run record stays serialisable
