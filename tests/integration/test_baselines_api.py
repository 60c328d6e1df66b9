"""Baseline jobs run by the server: submit, watch, fail with the log tail, cancel every rank,
roles, refusals, the link from a run, and the jobs a stopped or killed server left behind."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
from typing import Any

import httpx
import psutil
import pytest

from quorum.admin.auth import hash_token
from quorum.server import baselines as server_baselines
from quorum.server.baselines import SERVER_STOPPED, BaselineJobs
from quorum.server.store import Store
from tests.integration.harness import TOKEN, Federation, federation, run_config, wait_for

HEART = "examples.heart_disease.task:task"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def heart_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "task": HEART,
        "engine": "ddp",
        "nproc": 1,
        "device": "cpu",
        "log_every": 5,
        **overrides,
    }


async def post(fed: Federation, path: str, body: Any = None, token: str = TOKEN) -> httpx.Response:
    return await asyncio.to_thread(
        httpx.post,
        fed.admin_url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


async def wait_job(fed: Federation, job_id: str, timeout: float, *states: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = await fed.api(f"/api/v1/baselines/{job_id}")
        return job if job["status"] in states else None

    result: dict[str, Any] = await wait_for(probe, timeout, every=0.25)
    return result


def gone(processes: list[psutil.Process]) -> bool:
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


async def ranks_of(fed: Federation, job_id: str, nproc: int) -> list[psutil.Process]:
    """The job's process tree once it has reported progress (every rank is up)."""

    async def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = await fed.api(f"/api/v1/baselines/{job_id}")
        assert job["status"] == "running", job
        return job if job["progress"] else None

    job = await wait_for(probe, 120, every=0.25)
    leader = psutil.Process(job["pid"])
    tree = [leader, *leader.children(recursive=True)]
    # torchrun and its ranks (each rank in a session of its own)
    assert len(tree) >= nproc + 1, tree
    return tree


def test_heart_disease_baseline_job_completes_and_links_to_runs(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, [run_config(task=HEART, wait_timeout_s=60)]) as fed:
            created = await post(fed, "/api/v1/baselines", heart_spec(steps=60))
            assert created.status_code == 201, created.text
            job = created.json()
            assert job["id"].startswith("baseline-") and job["status"] == "running"
            assert job["spec"]["steps"] == 60 and job["pid"] > 0
            done = await wait_job(fed, job["id"], 180, "completed", "failed")
            assert done["status"] == "completed", done["log_tail"]
            result = done["result"]
            assert result["engine"] == "ddp" and result["train_loss"] > 0
            assert 0 <= result["eval_accuracy"] <= 1 and result["samples_per_s"] > 0
            assert 0 <= result["eval_metrics"]["accuracy_mean_sites"] <= 1
            assert len(result["peak_memory_bytes"]) == 1 and result["peak_memory_bytes"][0] > 0
            assert done["progress"]["step"] >= 55 and done["error"] is None
            listed = await fed.api("/api/v1/baselines")
            assert [j["id"] for j in listed] == [job["id"]]
            assert await fed.api("/api/v1/baselines", task="m:other") == []

            run = (await fed.api("/api/v1/runs"))[0]
            linked = (await fed.api(f"/api/v1/runs/{run['id']}"))["baselines"]
            assert [(b["id"], b["status"], b["engine"]) for b in linked] == [
                (job["id"], "completed", "ddp")
            ]
            metrics = linked[0]["metrics"]
            assert metrics["eval_accuracy"] == result["eval_accuracy"]
            assert metrics["accuracy_mean_sites"] == result["eval_metrics"]["accuracy_mean_sites"]

    asyncio.run(scenario())


def test_failed_job_is_recorded_with_its_log_tail(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            created = await post(fed, "/api/v1/baselines", heart_spec(data="atlantis", steps=5))
            assert created.status_code == 201, created.text
            failed = await wait_job(fed, created.json()["id"], 120, "completed", "failed")
            assert failed["status"] == "failed"
            assert "exited with status" in failed["error"]
            assert "atlantis" in failed["log_tail"]
            assert len(failed["log_tail"].encode()) <= server_baselines.LOG_TAIL_BYTES
            again = await post(fed, f"/api/v1/baselines/{failed['id']}/cancel")
            assert again.status_code == 409 and "already ended" in again.text

    asyncio.run(scenario())


def test_cancel_stops_every_rank(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            spec = heart_spec(nproc=2, steps=10_000_000, log_every=1)
            job = (await post(fed, "/api/v1/baselines", spec)).json()
            tree = await ranks_of(fed, job["id"], 2)
            cancelled = await post(fed, f"/api/v1/baselines/{job['id']}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
            assert gone(tree), [p for p in tree if p.is_running()]
            record = await fed.api(f"/api/v1/baselines/{job['id']}")
            assert record["status"] == "cancelled" and record["finished_at"] is not None

    asyncio.run(scenario())


def test_server_stop_ends_its_jobs_and_the_next_start_runs_the_queued_one(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> tuple[list[psutil.Process], str]:
        async with federation(tmp_path, []) as fed:
            job = (await post(fed, "/api/v1/baselines", heart_spec(steps=10_000_000))).json()
            tree = await ranks_of(fed, job["id"], 1)
            # max_baseline_jobs = 1 (the default): the second job waits its turn
            waiting = (await post(fed, "/api/v1/baselines", heart_spec(steps=5))).json()
            assert waiting["status"] == "queued" and waiting["pid"] is None
        return tree, waiting["id"]

    tree, waiting_id = asyncio.run(scenario())
    assert gone(tree)
    store = Store(tmp_path / "state" / "quorum.db")
    try:
        job, waiting = store.baselines()
        assert job.status == "failed" and job.error == SERVER_STOPPED
        assert waiting.status == "queued"  # never started: kept for the next start
    finally:
        store.close()

    async def restarted() -> None:
        async with federation(tmp_path, []) as fed:
            done = await wait_job(fed, waiting_id, 180, "completed", "failed")
            assert done["status"] == "completed", done["log_tail"]

    asyncio.run(restarted())


def test_roles_and_refusals(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An engine whose modules are missing, whatever this machine has installed.
    monkeypatch.setitem(server_baselines.ENGINE_MODULES, "deepspeed", ("quorum_no_such_module",))

    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            fed.server.store.add_token(hash_token("viewer-token"), "viewer", "test")
            denied = await post(fed, "/api/v1/baselines", heart_spec(), token="viewer-token")
            assert denied.status_code == 403 and "operator" in denied.json()["detail"]
            assert await fed.api("/api/v1/baselines") == []

            missing = await post(fed, "/api/v1/baselines", heart_spec(task="nowhere.task:task"))
            assert missing.status_code == 422 and "cannot import" in missing.json()["detail"]
            federated_only = await post(fed, "/api/v1/baselines", heart_spec(task=TASK_VECTOR))
            assert federated_only.status_code == 422
            assert "cannot train centralised" in federated_only.json()["detail"]
            extra = await post(
                fed, "/api/v1/baselines", heart_spec(engine="deepspeed", zero_stage=2)
            )
            assert extra.status_code == 422 and "quorum-fl[llm]" in extra.json()["detail"]
            bad = await post(fed, "/api/v1/baselines", heart_spec(zero_stage=2))
            assert bad.status_code == 422 and "zero_stage" in bad.text
            unknown = await asyncio.to_thread(
                httpx.get, fed.admin_url + "/api/v1/baselines/baseline-nope", headers=HEADERS
            )
            assert unknown.status_code == 404
            assert fed.server.store.baselines() == []  # nothing refused was recorded

    asyncio.run(scenario())


TASK_VECTOR = "tests.vector_task:task"


def test_restart_fails_the_jobs_left_running_and_stops_their_ranks(tmp_path: pathlib.Path) -> None:
    """A server killed with a job running: the new server records the job failed and stops the
    orphaned processes that name the job's folder, and no other process."""
    state = tmp_path / "state"
    store = Store(state / "quorum.db")
    job = store.create_baseline(HEART, heart_spec())
    out_dir = state / "baselines" / job.id
    out_dir.mkdir(parents=True)
    sleeper = [sys.executable, "-c", "import time, sys; time.sleep(120)"]
    orphan = subprocess.Popen([*sleeper, str(out_dir / "spec.json")], start_new_session=True)
    bystander = subprocess.Popen([*sleeper, str(tmp_path / "elsewhere")], start_new_session=True)
    try:
        store.start_baseline(job.id, orphan.pid, str(out_dir))
        jobs = BaselineJobs(store, state)  # what a restarted server does first
        assert orphan.wait(timeout=10) is not None
        assert bystander.poll() is None
        record = store.baseline(job.id)
        assert record.status == "failed" and record.error == SERVER_STOPPED
        assert jobs.running() == []
    finally:
        for p in (orphan, bystander):
            p.kill()
            p.wait()
        store.close()
