"""Crash recovery through the CLI: SIGKILL of the server mid-round, and of a site mid-round."""

from __future__ import annotations

import itertools
import os
import signal
from typing import Any

import numpy as np
import pytest

from quorum.privacy.dp.accounting import epsilon
from quorum.server.checkpoints import Checkpoints
from quorum.sim import processes
from quorum.wire import blobs
from tests.e2e.cli import Deployment, quorum, run_settings
from tests.vector_task import expected_fedavg


def _final_value(d: Deployment, run_id: str, round_no: int) -> np.ndarray:
    model, _ = Checkpoints(d.state_dir / "checkpoints").load(run_id, round_no)
    values = np.concatenate([v.reshape(-1) for v in blobs.decode(model).values()])
    return values


def _kill_server_in_round_3_and_finish(d: Deployment, run: dict[str, Any]) -> dict[str, Any]:
    """Two sites (a: delta 1, n 1; b: delta 3, n 3), SIGKILL of the server as round 3 runs (the
    sites hold their round-3 fits until then), a restart on the same state; returns the finished
    run."""
    d.run = run
    server = d.start_server()
    hold = d.root / "hold"
    hold.touch()
    d.start_site("a", f"delta=1.0,n=1,sleep=0.2,hold={hold},hold_from=3")
    d.start_site("b", f"delta=3.0,n=3,sleep=0.2,hold={hold},hold_from=3")
    d.kill_server_in_round(server, 3, hold)
    d.start_server()  # same config, same state directory; the sites rejoin on their own
    return d.wait_run(timeout=90)


@pytest.mark.slow
def test_server_killed_mid_round_restarts_and_finishes_the_run(deployment: Deployment) -> None:
    d = deployment
    run = _kill_server_in_round_3_and_finish(d, run_settings(rounds=5))
    assert run["rounds_completed"] == 5
    rounds = d.get(f"/api/v1/runs/{run['id']}/rounds")
    attempts: dict[int, list[tuple[int, str]]] = {}
    for r in rounds:
        attempts.setdefault(r["round"], []).append((r["attempt"], r["status"]))
    # The interrupted round was recorded as aborted and re-run; no completed round was lost
    # or re-run.
    interrupted = [n for n, a in attempts.items() if len(a) > 1]
    assert len(interrupted) == 1 and interrupted[0] >= 3, attempts
    (cut,) = interrupted
    assert attempts[cut] == [(1, "aborted"), (2, "completed")]
    assert all(attempts[n] == [(1, "completed")] for n in attempts if n != cut)
    aborted = d.get(f"/api/v1/runs/{run['id']}/rounds/{cut}")["earlier_attempts"][0]
    assert "server stopped" in aborted["abort_reason"]
    # Every round applied exactly one update from each site: the model proves it.
    want = expected_fedavg(5, [(1.0, 1), (3.0, 3)])
    np.testing.assert_allclose(_final_value(d, run["id"], 5), want, rtol=1e-6)


@pytest.mark.slow
def test_site_killed_mid_round_costs_only_its_update(deployment: Deployment) -> None:
    d = deployment
    d.run = None
    d.start_server()
    d.start_site("a", "delta=1.0,n=1,sleep=0.3")
    d.start_site("b", "delta=1.0,n=1,sleep=0.3")
    hold = d.root / "hold"  # never deleted: c is always mid-fit in round 2 when it is killed
    hold.touch()
    victim = d.start_site("c", f"delta=4.0,n=1,sleep=0.3,hold={hold},hold_from=2")
    d.wait_connected({"a", "b", "c"})
    d.submit(run_settings(rounds=3, min_fit_sites=2, min_available_sites=2))

    def round_2_offered() -> bool:
        run = d.run_record()
        if not run or run["rounds_completed"] < 1:
            return False
        detail = d.get(f"/api/v1/runs/{run['id']}/rounds/2")
        return "c" in detail["cohort"]

    d.wait(round_2_offered, 60, "round 2 to offer c a task")
    victim.process.send_signal(signal.SIGKILL)
    run = d.wait_run(timeout=60)
    second = d.get(f"/api/v1/runs/{run['id']}/rounds/2")
    assert second["status"] == "completed" and second["attempt"] == 1
    fits = {p["site"]: p["status"] for p in second["participants"] if p["kind"] == "fit"}
    assert fits == {"a": "accepted", "b": "accepted", "c": "lost"}
    # The round closed when the site's session dropped, not at the 20 s deadline.
    assert second["duration_s"] < 15
    # Round 1 had all three updates, rounds 2 and 3 only a and b.
    want = (1.0 + 1.0 + 4.0) / 3 + 2 * 1.0
    np.testing.assert_allclose(_final_value(d, run["id"], 3), want, rtol=1e-6)


@pytest.mark.slow
def test_central_dp_accounting_and_clipping_norm_survive_a_server_kill(
    deployment: Deployment,
) -> None:
    d = deployment
    z = 1.5
    settings = run_settings(
        rounds=5,
        central_dp={
            "enabled": True,
            "noise_multiplier": z,
            "clipping_norm": 0.1,
            "adaptive": True,
            "clipped_count_stddev": 1.0,
        },
    )
    run = _kill_server_in_round_3_and_finish(d, settings)
    central = d.get(f"/api/v1/runs/{run['id']}/privacy")["central"]
    releases = central["rounds"]
    # Every completed round was released once; a round cut after its model went out (in its
    # evaluation) would also count, with its second attempt.
    assert {r["round"] for r in releases} == {1, 2, 3, 4, 5}
    # ε after the k-th release is that of exactly k: the restart neither lost nor re-counted one.
    for k, r in enumerate(releases, start=1):
        assert r["epsilon"] == pytest.approx(epsilon("rdp", 1e-5, [(z, 1.0, k)]))
    # Each round clipped with the norm the previous one chose, across the restart too.
    details = [
        d.get(f"/api/v1/runs/{run['id']}/rounds/{n}")["metrics"]["central_dp"] for n in range(1, 6)
    ]
    for before, after in itertools.pairwise(details):
        assert after["clipping_norm"] == pytest.approx(before["next_clipping_norm"])
    assert details[-1]["clipping_norm"] != 0.1  # it moved


@pytest.mark.slow
def test_a_damaged_checkpoint_fails_the_run_by_name_and_is_never_served(
    deployment: Deployment,
) -> None:
    """The server is killed in round 3 and round 2's checkpoint is overwritten with NaN: on
    restart the run fails with the file's name instead of serving the damaged model (which
    every site's update would then be refused against, attempt after attempt)."""
    d = deployment
    d.run = run_settings(rounds=5)
    server = d.start_server()
    hold = d.root / "hold"
    hold.touch()
    d.start_site("a", f"delta=1.0,n=1,hold={hold},hold_from=3")
    d.start_site("b", f"delta=3.0,n=3,hold={hold},hold_from=3")
    d.kill_server_in_round(server, 3, hold)
    (run_dir,) = (d.state_dir / "checkpoints").iterdir()
    path = Checkpoints(d.state_dir / "checkpoints").model_path(run_dir.name, 2)
    data = bytearray(path.read_bytes())
    layout = blobs.read_layout(bytes(data))
    data[layout.data_offset :] = np.full(layout.numel, np.nan, np.float32).tobytes()
    path.write_bytes(bytes(data))
    d.start_server()
    run = d.wait_run(status="failed", timeout=90)
    assert "round-00002.model.safetensors" in run["error"]
    assert "does not hash to the digest recorded" in run["error"]
    assert run["rounds_completed"] == 2
    assert d.get("/api/v1/health")["status"] == "ok"  # one run failed, not the server


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["store removed", "write-ahead log garbage"])
def test_a_store_that_lost_its_runs_refuses_to_start_until_init(
    deployment: Deployment, damage: str
) -> None:
    """Never a silent fresh start: a store that does not know the runs whose checkpoints are in
    the state directory stops the server with one line saying what to do; `--init` starts
    afresh and moves those checkpoints aside."""
    d = deployment
    d.run = run_settings(rounds=2)
    server = d.start_server()
    d.start_site("a", "delta=1.0,n=1")
    d.start_site("b", "delta=3.0,n=3")
    d.wait_run()
    server.process.send_signal(signal.SIGKILL)  # its write-ahead log stays as it was
    server.process.wait()
    db = d.state_dir / "quorum.db"
    wal = db.with_name("quorum.db-wal")
    if damage == "store removed":
        for path in (db, wal, db.with_name("quorum.db-shm")):
            path.unlink(missing_ok=True)
    else:
        assert wal.stat().st_size > 0
        wal.write_bytes(os.urandom(wal.stat().st_size))
    config = d.write_config()
    refused = quorum("server", "start", "--config", str(config), "--insecure", timeout=60)
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = " ".join(refused.stderr.split())
    assert "restore quorum.db" in message and "--init" in message
    assert "does not know 1 run(s)" in message or "is damaged" in message

    started = processes.start(
        "server-init",
        ["server", "start", "--config", str(config), "--insecure", "--init"],
        d.root / "logs",
    )
    d.children.append(started)
    d.wait(lambda: d.run_record() is not None, 60, "the fresh start to answer")
    (aside,) = d.state_dir.glob("checkpoints.before-init-*")
    assert len(list(aside.iterdir())) == 1  # the lost run's checkpoints, kept


@pytest.mark.slow
def test_state_check_finds_damage_and_a_backup_restores_the_store(deployment: Deployment) -> None:
    """`quorum state backup` while the server runs, `quorum state check` before and after a
    checkpoint is damaged, and the backup put back in place of a lost store."""
    d = deployment
    d.run = run_settings(rounds=2)
    server = d.start_server()
    d.start_site("a", "delta=1.0,n=1")
    d.start_site("b", "delta=3.0,n=3")
    run = d.wait_run()
    backup = d.root / "backup.db"
    state = ("--state-dir", str(d.state_dir))
    done = quorum("state", "backup", *state, "--out", str(backup))
    assert done.returncode == 0 and backup.exists(), done.stderr
    sound = quorum("state", "check", *state)
    assert sound.returncode == 0 and "2 kept checkpoint(s) verified" in sound.stderr, sound.stderr

    model = Checkpoints(d.state_dir / "checkpoints").model_path(run["id"], 2)
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    damaged = quorum("state", "check", *state)
    assert damaged.returncode == 2
    assert "round-00002.model.safetensors" in " ".join(damaged.stderr.split())
    model.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))  # mended

    server.process.send_signal(signal.SIGTERM)
    server.process.wait()
    for suffix in ("", "-wal", "-shm"):
        (d.state_dir / f"quorum.db{suffix}").unlink(missing_ok=True)
    backup.replace(d.state_dir / "quorum.db")
    d.start_server()
    restored = d.get(f"/api/v1/runs/{run['id']}")
    assert restored["status"] == "completed" and restored["rounds_completed"] == 2
