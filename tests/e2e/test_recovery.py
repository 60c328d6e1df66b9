"""Crash recovery through the CLI: SIGKILL of the server mid-round, and of a site mid-round."""

from __future__ import annotations

import itertools
import os
import pathlib
import random
import signal
import sqlite3
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
    model, _ = Checkpoints(d.state_dir / "checkpoints").open(run_id, round_no)
    values = np.concatenate([v.reshape(-1) for v in model.params().values()])
    return values


def _kill_server_in_round_3(d: Deployment, run: dict[str, Any]) -> None:
    """Two sites (a: delta 1, n 1; b: delta 3, n 3), SIGKILL of the server as round 3 runs (the
    sites hold their round-3 fits until then)."""
    d.run = run
    server = d.start_server()
    hold = d.root / "hold"
    hold.touch()
    d.start_site("a", f"delta=1.0,n=1,sleep=0.2,hold={hold},hold_from=3")
    d.start_site("b", f"delta=3.0,n=3,sleep=0.2,hold={hold},hold_from=3")
    d.kill_server_in_round(server, 3, hold)


def _kill_server_in_round_3_and_finish(d: Deployment, run: dict[str, Any]) -> dict[str, Any]:
    """The kill, then a restart on the same state; returns the finished run."""
    _kill_server_in_round_3(d, run)
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
@pytest.mark.parametrize("damage", ["values overwritten with NaN", "file truncated"])
def test_a_damaged_checkpoint_fails_the_run_by_name_and_is_never_served(
    deployment: Deployment, damage: str
) -> None:
    """The server is killed in round 3 and round 2's checkpoint is damaged: on restart the run
    fails with the file's name instead of serving the damaged model (which every site's update
    would then be refused against, attempt after attempt)."""
    d = deployment
    _kill_server_in_round_3(d, run_settings(rounds=5))
    (run_dir,) = (d.state_dir / "checkpoints").iterdir()
    path = Checkpoints(d.state_dir / "checkpoints").model_path(run_dir.name, 2)
    data = bytearray(path.read_bytes())
    if damage == "file truncated":
        del data[len(data) // 2 :]
    else:
        layout = blobs.read_layout(bytes(data))
        data[layout.data_offset :] = np.full(layout.numel, np.nan, np.float32).tobytes()
    path.write_bytes(bytes(data))
    d.start_server()
    run = d.wait_run(status="failed", timeout=90)
    assert "round-00002.model.safetensors" in run["error"], run["error"]
    assert run["rounds_completed"] == 2
    assert d.get("/api/v1/health")["status"] == "ok"  # one run failed, not the server


def _answers(d: Deployment) -> bool:
    try:
        d.get("/api/v1/health")
    except Exception:
        return False
    return True


def _damage_store(state_dir: pathlib.Path, damage: str) -> None:
    db = state_dir / "quorum.db"
    wal = db.with_name("quorum.db-wal")
    if damage == "store removed":
        for path in (db, wal, db.with_name("quorum.db-shm")):
            path.unlink(missing_ok=True)
    elif damage.startswith("write-ahead log"):
        size = wal.stat().st_size
        assert size > 0
        if damage == "write-ahead log garbage":
            wal.write_bytes(os.urandom(size))
        else:
            with wal.open("r+b") as f:
                f.truncate(size // 2)
    elif damage == "store truncated":
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    else:  # pages damaged: every page after the first two overwritten past its header
        data = bytearray(db.read_bytes())
        page = int.from_bytes(data[16:18], "big")
        garbage = random.Random(damage)  # the same damage on every run
        for start in range(2 * page, len(data), page):
            data[start + 8 : start + page] = garbage.randbytes(page - 8)
        db.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        "store removed",
        "write-ahead log garbage",
        "write-ahead log truncated",
        "store truncated",
        "pages damaged",
    ],
)
def test_after_damage_to_the_store_the_server_recovers_or_refuses_in_one_line(
    deployment: Deployment, damage: str
) -> None:
    """Never a silent fresh start: after each kind of damage the server either starts on a
    store that still holds every completed round, or refuses in one line that says what to
    do; `--init` then starts afresh and moves the lost run's checkpoints aside. The write-ahead
    log cases kill the server (the log stays as it was); the others stop it cleanly, so the
    data sits in the main file."""
    d = deployment
    d.run = run_settings(rounds=2)
    server = d.start_server()
    d.start_site("a", "delta=1.0,n=1")
    d.start_site("b", "delta=3.0,n=3")
    run_id = d.wait_run()["id"]
    wal_case = damage.startswith("write-ahead log")
    server.process.send_signal(signal.SIGKILL if wal_case else signal.SIGTERM)
    server.process.wait()
    _damage_store(d.state_dir, damage)
    config = d.write_config()
    server = processes.start(
        "server-damaged",
        ["server", "start", "--config", str(config), "--insecure"],
        d.root / "logs",
    )
    d.children.append(server)
    d.wait(lambda: not server.alive() or _answers(d), 60, "the server to start or refuse")
    if server.alive():  # recovered: the run ends without running a completed round again
        kept = d.wait_run(timeout=60)
        assert kept["id"] == run_id and kept["rounds_completed"] == 2, kept
        rounds = d.get(f"/api/v1/runs/{run_id}/rounds")
        assert [(r["round"], r["status"]) for r in rounds] == [(1, "completed"), (2, "completed")]
        return
    assert server.process.returncode == 2, server.log_tail(40)
    lines = server.log_path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines  # one line, no traceback
    message = " ".join(" ".join(lines).split())
    assert "quorum.db" in message and "--init" in message, message
    if damage == "store removed":  # the refusal left the folder as it found it
        assert not list(d.state_dir.glob("quorum.db*"))

    fresh = processes.start(
        "server-init",
        ["server", "start", "--config", str(config), "--insecure", "--init"],
        d.root / "logs",
    )
    d.children.append(fresh)
    d.wait(lambda: d.run_record() is not None, 60, "the fresh start to answer")
    (aside,) = d.state_dir.glob("checkpoints.before-init-*")
    assert [p.name for p in aside.iterdir()] == [run_id]  # the lost run's checkpoints, kept
    if damage in ("store truncated", "pages damaged"):
        assert list(d.state_dir.glob("quorum.db.damaged-*"))  # and the damaged store


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


@pytest.mark.slow
def test_a_stored_run_that_no_longer_validates_fails_that_run_not_the_server(
    deployment: Deployment,
) -> None:
    """A run record that no longer reads back (a damaged disk, a laxer older version) fails
    that run with a message on restart; the run list, the other routes and the next run go on."""
    d = deployment
    _kill_server_in_round_3(d, run_settings(rounds=5))
    with sqlite3.connect(d.state_dir / "quorum.db") as db:
        db.execute("UPDATE runs SET config_json = json_set(config_json, '$.rounds', -1)")
    d.start_server()
    run = d.wait_run(status="failed", timeout=60)
    assert run["config"] is None
    assert "stored configuration no longer validates" in run["error"], run["error"]
    assert "rounds" in run["error"]
    assert d.get(f"/api/v1/runs/{run['id']}")["rounds_completed"] == 2
    assert d.get("/api/v1/health")["status"] == "ok"
    after = d.submit(run_settings(name="after", rounds=1))
    d.wait(
        lambda: d.get(f"/api/v1/runs/{after['id']}")["status"] == "completed",
        90,
        "the next run to complete",
    )
