"""Compressed runs through the CLI: a top-k run whose site is killed and restarted keeps its
error feedback (the residual file it wrote is the one the new agent loads), and a run asking
for compression under secure aggregation is refused with the reason."""

from __future__ import annotations

import pathlib
import re
import signal

import numpy as np
import pytest
import tomli_w

from quorum.server.checkpoints import Checkpoints
from quorum.wire import blobs
from tests.e2e.cli import Deployment, heart_disease_sim, run_settings
from tests.e2e.test_operator_cli import failed, ok, op


def test_topk_error_feedback_survives_a_site_restart(deployment: Deployment) -> None:
    """15 values, k = 5, both sites add 0.5 everywhere each round (a: 10 examples, b: 30), in
    lockstep: round 1 sends set A with 0.5, round 2 set B with 1.0 (what was left out plus
    the new 0.5). Site a is killed in round 3, which b finishes alone (set C with 1.5), and
    restarted. In round 4 a's residual from round 2 (0.5 on A, 1.0 on C) makes it send C with
    1.5, and b sends A with 1.5: a restarted agent without its residual would send ties."""
    d = deployment
    d.run = None
    d.start_server()
    hold = d.root / "hold"  # a's round-3 fit waits on it until a is killed
    hold.touch()
    key_a = d.keygen_and_add("a")
    victim = d.start_site("a", f"delta=0.5,n=10,hold={hold},hold_from=3", key=key_a)
    d.start_site("b", "delta=0.5,n=30")
    d.wait_connected({"a", "b"})
    run = d.submit(
        run_settings(
            rounds=4,
            min_fit_sites=1,
            min_available_sites=2,
            compression={"upload": "topk", "fraction": 1 / 3},
        )
    )
    residual_file = key_a.with_suffix(".residuals") / run["id"] / "round-2.safetensors"

    def round_3_offered_to_a() -> bool:
        record = d.run_record()
        if not record or record["rounds_completed"] < 2:
            return False
        return "a" in d.get(f"/api/v1/runs/{run['id']}/rounds/3")["cohort"]

    # Round 2's residual is on disk by now: a wrote it once its upload was accepted, before it
    # took round 2's evaluate task (one task at a time), which round 2 waited for.
    d.wait(round_3_offered_to_a, 60, "round 3 to offer a its task")
    stored = blobs.decode(residual_file.read_bytes())["residual"]
    # what a left out: 0.5 on A (sent in round 1), nothing on B, 1.0 on C (never sent)
    assert sorted(np.round(stored, 6).tolist()) == [0.0] * 5 + [0.5] * 5 + [1.0] * 5
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    d.wait(
        lambda: d.get(f"/api/v1/runs/{run['id']}/rounds/3")["status"] == "completed", 60, "round 3"
    )
    restarted = d.start_site("a", "delta=0.5,n=10", key=key_a)
    done = d.wait_run(timeout=90)
    assert done["rounds_completed"] == 4

    fits = {
        p["site"]: p["status"]
        for p in d.get(f"/api/v1/runs/{run['id']}/rounds/3")["participants"]
        if p["kind"] == "fit"
    }
    assert fits == {"a": "lost", "b": "accepted"}
    loaded = re.search(
        r"event=residual_loaded run_id=\S+ round=2 numel=15 norm=(\S+)",
        restarted.log_path.read_text(),
    )
    assert loaded, restarted.log_tail(40)
    assert float(loaded.group(1)) == pytest.approx(float(np.linalg.norm(stored)), rel=1e-5)
    model, _ = Checkpoints(d.state_dir / "checkpoints").open(run["id"], 4)
    final = np.sort(np.concatenate([v.reshape(-1) for v in model.params().values()]))
    # A: 0.5 + 1.5·30/40; B: 1.0; C: 1.5 + 1.5·10/40
    want = np.sort(np.repeat([0.5 + 1.5 * 0.75, 1.0, 1.5 + 1.5 * 0.25], 5))
    np.testing.assert_allclose(final, want, rtol=1e-5)
    last = d.get(f"/api/v1/runs/{run['id']}/rounds/4")
    assert 0 < last["bytes_in"] < last["bytes_in_uncompressed"]
    shown = ok(op(d, "rounds", run["id"], "4"))
    assert f"{last['bytes_in_uncompressed']:,}" in shown and "uploads uncompressed" in shown


def test_compression_with_secure_aggregation_is_refused(deployment: Deployment) -> None:
    d = deployment
    d.run = None
    d.start_server()
    run_file = d.root / "run.toml"
    run_file.write_text(tomli_w.dumps(run_settings(secagg={"enabled": True})))
    refused = op(d, "runs", "submit", str(run_file), "--set", "compression.upload=int8")
    failed(refused, "SecAgg already quantises", "compression.upload")
    assert op(d, "runs", "list", "--output", "json").stdout.strip() == "[]"


def test_quorum_sim_runs_a_compressed_run_set_on_its_command_line(tmp_path: pathlib.Path) -> None:
    _, report = heart_disease_sim(
        tmp_path,
        "--set",
        "run.rounds=2",
        "--set",
        "run.compression.upload=topk",
        "--set",
        "run.compression.fraction=0.5",
    )
    assert report["status"] == "completed"
    assert report["config"]["run"]["compression"]["upload"] == "topk"
    for row in report["rounds"]:
        # 4 hospitals, 14 parameters: 7 float16 values and a 2-byte bitmap instead of 56 bytes
        assert row["upload_bytes"] < row["upload_bytes_uncompressed"]
    kept = sorted((tmp_path / "work" / "sites").glob(f"*/residuals/{report['run_id']}/*"))
    assert [p.name for p in kept] == ["round-1.safetensors", "round-2.safetensors"] * 4
