"""BaselineJobs against a stand-in for torchrun (no torch): a launcher process that writes the
job folder's files and, like torchrun, starts its "ranks" each in a session of its own, so that
signalling the launcher's process group alone would leave them running."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from quorum.baseline.spec import BaselineSpec
from quorum.errors import ConflictError
from quorum.server import baselines as jobs_module
from quorum.server.baselines import SERVER_STOPPED, BaselineJobs
from quorum.server.store import Store

FAKE_TORCHRUN = r"""
import json, os, signal, subprocess, sys, time
out, mode = sys.argv[1], sys.argv[2]
if mode == "rank":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a rank stuck in a collective
    while True:
        time.sleep(1)
def progress(step):
    with open(os.path.join(out, "progress.jsonl"), "a") as fh:
        fh.write(json.dumps({"step": step, "loss": 1.0 / step, "elapsed_s": 0.1 * step}) + "\n")
if mode == "ok":
    for step in (1, 2, 3):
        progress(step)
        time.sleep(0.05)
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump({"engine": "ddp", "train_loss": 0.33, "eval_accuracy": 0.75,
                   "eval_metrics": {"accuracy": 0.75}, "peak_memory_bytes": [1, 2]}, fh)
    sys.exit(0)
if mode == "fail":
    print("x" * 5000)
    print("Traceback: ValueError: no data named 'atlantis'", flush=True)
    sys.exit(3)
if mode == "no-result":
    sys.exit(0)
# "hang": two ranks in sessions of their own; the launcher ignores SIGTERM too
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(2):
    subprocess.Popen([sys.executable, "-c", sys.argv[3],
                      out, "rank", sys.argv[3]], start_new_session=True)
progress(1)
while True:
    time.sleep(1)
"""


def fake_start(spec: BaselineSpec, out_dir: Any, log_path: Any) -> subprocess.Popen[bytes]:
    mode = spec.data  # the tests name the behaviour in `data`
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", FAKE_TORCHRUN, str(out_dir), mode, FAKE_TORCHRUN],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def jobs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> BaselineJobs:
    from quorum.baseline import launcher

    monkeypatch.setattr(launcher, "start", fake_start)
    monkeypatch.setattr(jobs_module, "check_task", lambda ref: None)
    return BaselineJobs(Store(tmp_path / "quorum.db"), tmp_path, poll_s=0.05, grace_s=1.0)


def spec(mode: str) -> BaselineSpec:
    return BaselineSpec(task="tests.vector_task:task", data=mode, steps=3)


async def until_ended(jobs: BaselineJobs, job_id: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while jobs.store.baseline(job_id).active:
        assert time.monotonic() < deadline, "job did not end"
        await asyncio.sleep(0.05)
    return jobs.store.baseline(job_id).status


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def test_completed_job_records_progress_and_result(jobs: BaselineJobs) -> None:
    async def scenario() -> None:
        job = await jobs.submit(spec("ok"))
        assert job.status == "running" and job.pid is not None and job.out_dir
        assert await until_ended(jobs, job.id) == "completed"
        done = jobs.store.baseline(job.id)
        assert done.result is not None and done.result["train_loss"] == 0.33
        assert done.progress == {"step": 3, "loss": 1 / 3, "elapsed_s": 0.1 * 3}
        assert (pathlib.Path(done.out_dir or "") / "job.log").exists()
        assert jobs.running() == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("mode", "error"),
    [("fail", "exited with status 3"), ("no-result", "without writing result.json")],
)
def test_failed_job_keeps_the_end_of_its_log(jobs: BaselineJobs, mode: str, error: str) -> None:
    async def scenario() -> None:
        job = await jobs.submit(spec(mode))
        assert await until_ended(jobs, job.id) == "failed"
        failed = jobs.store.baseline(job.id)
        assert failed.error is not None and error in failed.error
        if mode == "fail":
            tail = failed.log_tail or ""
            assert "no data named 'atlantis'" in tail
            assert len(tail.encode()) <= jobs_module.LOG_TAIL_BYTES

    asyncio.run(scenario())


def test_cancel_kills_ranks_in_their_own_sessions(jobs: BaselineJobs) -> None:
    async def scenario() -> None:
        job = await jobs.submit(spec("hang"))
        assert job.pid is not None
        leader = psutil.Process(job.pid)
        deadline = time.monotonic() + 20
        while len(leader.children()) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        ranks = [p.pid for p in leader.children()]
        assert all(os.getpgid(pid) != job.pid for pid in ranks)  # out of the launcher's group
        await asyncio.sleep(0.2)  # a poll of the watcher
        cancelled = await jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        assert alive([job.pid, *ranks]) == []
        assert jobs.running() == []

    asyncio.run(scenario())


def test_shutdown_stops_and_fails_running_jobs(jobs: BaselineJobs) -> None:
    async def scenario() -> None:
        job = await jobs.submit(spec("hang"))
        assert job.pid is not None
        leader = psutil.Process(job.pid)
        deadline = time.monotonic() + 20
        while len(leader.children()) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        ranks = [p.pid for p in leader.children()]
        await jobs.shutdown()
        assert alive([job.pid, *ranks]) == []
        record = jobs.store.baseline(job.id)
        assert record.status == "failed" and record.error == SERVER_STOPPED

    asyncio.run(scenario())


def test_jobs_beyond_max_running_wait_queued_in_order(
    tmp_path: pathlib.Path, jobs: BaselineJobs
) -> None:
    async def scenario() -> None:
        first = await jobs.submit(spec("hang"))
        second = await jobs.submit(spec("ok"))
        third = await jobs.submit(spec("ok"))
        assert (first.status, second.status, third.status) == ("running", "queued", "queued")
        assert second.pid is None and jobs.running() == [first.id]
        # a queued job is cancelled without ever starting
        assert (await jobs.cancel(third.id)).status == "cancelled"
        assert jobs.store.baseline(third.id).pid is None
        # while a cancel stops the running job (its launcher ignores SIGTERM), the slot stays
        # taken and a second cancel is refused
        cancelling = asyncio.ensure_future(jobs.cancel(first.id))
        await asyncio.sleep(0)  # the cancel runs up to its first wait for the processes
        with pytest.raises(ConflictError, match="already being stopped"):
            await jobs.cancel(first.id)
        late = await jobs.submit(spec("ok"))
        assert late.status == "queued" and jobs.store.baseline(second.id).status == "queued"
        # once it is gone, the oldest queued job starts, and runs to its end
        assert (await cancelling).status == "cancelled"
        assert jobs.store.baseline(second.id).status == "running"
        assert await until_ended(jobs, second.id) == "completed"
        assert await until_ended(jobs, late.id) == "completed"
        # a server stopped with a job queued starts it at its next start
        blocker = await jobs.submit(spec("hang"))
        waiting = await jobs.submit(spec("ok"))
        await jobs.shutdown()
        assert jobs.store.baseline(blocker.id).status == "failed"
        assert jobs.store.baseline(waiting.id).status == "queued"
        restarted = BaselineJobs(jobs.store, tmp_path, poll_s=0.05, grace_s=1.0)
        restarted.start_queued()
        assert await until_ended(restarted, waiting.id) == "completed"

    asyncio.run(scenario())


def test_a_job_that_cannot_start_is_failed(
    jobs: BaselineJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quorum.baseline import launcher

    def broken(*_: Any) -> subprocess.Popen[bytes]:
        raise OSError("no torchrun here")

    monkeypatch.setattr(launcher, "start", broken)
    job = asyncio.run(jobs.submit(spec("ok")))
    assert job.status == "failed" and "no torchrun here" in (job.error or "")


def test_last_progress_reads_the_last_complete_line(tmp_path: pathlib.Path) -> None:
    assert jobs_module._last_progress(tmp_path) is None
    path = tmp_path / "progress.jsonl"
    lines = "".join(f'{{"step": {i}, "loss": {1 / i}}}\n' for i in range(1, 5001))
    path.write_text(lines + '{"step": 5001, "lo')  # a line being written
    assert jobs_module._last_progress(tmp_path) == {"step": 5000, "loss": 1 / 5000}
    path.write_text('{"step": 1, "lo')
    assert jobs_module._last_progress(tmp_path) is None
