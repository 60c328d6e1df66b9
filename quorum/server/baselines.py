"""Centralised baseline jobs run by the server (DESIGN.md section 12; `POST /api/v1/baselines`).

Each job is a child process of the server started by `quorum.baseline.launcher` (torchrun and
its ranks) with its files in `STATE_DIR/baselines/ID/`. An asyncio task per job copies the
worker's progress into the store and, when the process exits, records the result or the failure
with the end of the log. The store is the record; this object only holds the live processes.
At most `max_running` jobs run at once; the others wait in the store as `queued` and start in
submission order when one ends.

Stopping a job must stop every rank, and torchrun starts each rank in a session of its own, so
signalling the launcher's process group is not enough: if torchrun were killed before its ranks
the ranks would be orphaned outside any group we know. The job's process tree is therefore
snapshotted at every poll, the group is asked to stop (SIGTERM: torchrun forwards it to its
ranks), and whatever of the tree outlives the grace period is SIGKILLed process by process
(psutil checks each process's start time, so a recycled pid is never hit).

A server that died with jobs running leaves them orphaned: at the next start they are recorded
failed (queued ones stay queued), and any process still running whose command line names the
job's own folder (a path unique to that job) is stopped the same way, so no stale rank keeps
training unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from quorum.baseline.spec import BaselineSpec
from quorum.errors import ConfigError, ConflictError, QuorumError
from quorum.server.records import BaselineRecord
from quorum.server.store import Store

log = logging.getLogger("quorum.server.baselines")

SERVER_STOPPED = "the server stopped while the job ran"
LOG_TAIL_BYTES = 4096
ENGINE_MODULES = {"deepspeed": ("deepspeed",), "megatron": ("megatron.core",)}
"""The modules each optional engine needs (all of them in the `llm` extra)."""


@dataclass
class _Job:
    id: str
    process: subprocess.Popen[bytes]
    out_dir: pathlib.Path
    log_path: pathlib.Path
    tree: dict[int, psutil.Process] = field(default_factory=dict)
    """Every process seen in the job's tree (the launcher, torchrun, ranks, their workers)."""
    ending: str | None = None
    """Set when a cancel or the server's shutdown stops the job: the watcher records nothing."""
    watcher: asyncio.Task[None] | None = None


class BaselineJobs:
    """Starts, watches, cancels and records the server's baseline jobs."""

    def __init__(
        self,
        store: Store,
        state_dir: pathlib.Path,
        *,
        poll_s: float = 0.5,
        grace_s: float = 5.0,
        max_running: int = 1,
    ) -> None:
        self.store = store
        self.root = state_dir / "baselines"
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.max_running = max_running
        self._jobs: dict[str, _Job] = {}
        self._closing = False
        self._recover()

    # ---- submit, cancel, shutdown ----

    async def submit(self, spec: BaselineSpec) -> BaselineRecord:
        """Checks what the server can check before any process starts (the engine's extra,
        the task's import), records the job queued and starts it if a slot is free."""
        check_engine(spec.engine)
        await asyncio.to_thread(check_task, spec.task)
        record = self.store.create_baseline(spec.task, spec.model_dump(mode="json"))
        self.start_queued()
        return self.store.baseline(record.id)

    def start_queued(self) -> None:
        """Starts queued jobs, oldest first, while fewer than `max_running` run. Called at
        each submit and each job's end, and once by the server at start for the jobs a
        previous server process left queued."""
        while not self._closing and len(self._jobs) < self.max_running:
            queued = [b for b in self.store.baselines() if b.status == "queued"]
            if not queued:
                return
            self._start(queued[0])

    def _start(self, record: BaselineRecord) -> None:
        out_dir = self.root / record.id
        log_path = out_dir / "job.log"
        try:
            # a job queued by an older server version may no longer validate: it fails alone
            spec = BaselineSpec.model_validate(record.spec)
            out_dir.mkdir(parents=True, exist_ok=True)
            from quorum.baseline import launcher  # torch's, imported when a job starts

            process = launcher.start(spec, out_dir, log_path)
        except Exception as exc:
            self.store.finish_baseline(
                record.id, "failed", error=f"the job could not start: {exc}", log_tail=None
            )
            log.warning("event=baseline_start_failed baseline_id=%s error=%s", record.id, exc)
            return
        job = _Job(record.id, process, out_dir, log_path)
        self._jobs[record.id] = job
        _snapshot(job)
        self.store.start_baseline(record.id, process.pid, str(out_dir))
        job.watcher = asyncio.create_task(self._watch(job), name=f"baseline-{record.id}")
        log.info(
            "event=baseline_started baseline_id=%s task=%s engine=%s nproc=%d pid=%d",
            record.id,
            spec.task,
            spec.engine,
            spec.nproc,
            process.pid,
        )

    async def cancel(self, job_id: str) -> BaselineRecord:
        """Stops every process of the job (SIGTERM, SIGKILL after the grace period), then
        records it cancelled; a queued job is only recorded."""
        record = self.store.baseline(job_id)
        if not record.active:
            raise ConflictError(f"baseline job {job_id} has already ended ({record.status})")
        job = self._jobs.get(job_id)
        if job is not None and job.ending:
            raise ConflictError(f"baseline job {job_id} is already being stopped")
        if job is not None:
            await self._stop(job, "cancelled")
        self.store.finish_baseline(
            job_id, "cancelled", log_tail=_log_tail(job.log_path) if job else None
        )
        log.info("event=baseline_cancelled baseline_id=%s", job_id)
        # the slot frees only now, once every process of the job is gone and it is recorded
        self._jobs.pop(job_id, None)
        self.start_queued()
        return self.store.baseline(job_id)

    def close(self) -> None:
        """No job starts from now on: the server is stopping."""
        self._closing = True

    async def shutdown(self) -> None:
        """The server is stopping: its running jobs are stopped and recorded failed; queued
        ones stay queued for the next start."""
        self.close()
        jobs = list(self._jobs.values())
        await asyncio.gather(*(self._stop(job, "shutdown") for job in jobs))
        for job in jobs:
            self.store.finish_baseline(
                job.id, "failed", error=SERVER_STOPPED, log_tail=_log_tail(job.log_path)
            )
            self._jobs.pop(job.id, None)

    def running(self) -> list[str]:
        return sorted(self._jobs)

    # ---- watching ----

    async def _watch(self, job: _Job) -> None:
        last: dict[str, Any] | None = None
        try:
            while True:
                code = job.process.poll()
                if code is None:
                    _snapshot(job)
                progress = _last_progress(job.out_dir)
                if progress is not None and progress != last:
                    self.store.set_baseline_progress(job.id, progress)
                    last = progress
                if code is not None or job.ending:
                    break
                await asyncio.sleep(self.poll_s)
            if job.ending or code is None:
                return  # the canceller (or the shutdown) records the outcome and frees the slot
            # A launcher that exited may leave a rank behind (torchrun killed from outside).
            await _terminate(job.tree.values(), grace_s=min(self.grace_s, 2.0))
            self._record_exit(job, code)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a watcher bug must not leave the job 'running' forever
            log.exception("event=baseline_watch_failed baseline_id=%s", job.id)
            await _terminate(job.tree.values(), grace_s=min(self.grace_s, 2.0))
            self.store.finish_baseline(
                job.id, "failed", error=f"watching the job failed: {exc}", log_tail=None
            )
        self._jobs.pop(job.id, None)
        self.start_queued()

    def _record_exit(self, job: _Job, code: int) -> None:
        result = _read_result(job.out_dir)
        tail = _log_tail(job.log_path)
        if code == 0 and result is not None:
            self.store.finish_baseline(job.id, "completed", result=result, log_tail=tail)
            log.info("event=baseline_completed baseline_id=%s", job.id)
            return
        if code == 0:
            error = "the job exited without writing result.json"
        elif code < 0:
            error = f"the job was killed by signal {-code} ({_signal_name(-code)})"
        else:
            error = f"the job exited with status {code}"
        self.store.finish_baseline(job.id, "failed", result=result, error=error, log_tail=tail)
        log.warning("event=baseline_failed baseline_id=%s error=%s", job.id, error)

    async def _stop(self, job: _Job, why: str) -> None:
        """SIGTERM to the launcher's group (torchrun passes it on to its ranks), then SIGKILL
        to every process of the tree still alive after the grace period."""
        job.ending = why
        _snapshot(job)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.process.pid, signal.SIGTERM)
        await _terminate(job.tree.values(), grace_s=self.grace_s, signalled=True)
        job.process.poll()
        if job.watcher is not None and job.watcher is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await job.watcher

    # ---- restart ----

    def _recover(self) -> None:
        left = self.store.interrupt_baselines(SERVER_STOPPED)
        dirs = [b.out_dir for b in left if b.out_dir]
        if not dirs:
            return
        for b in left:
            log.warning("event=baseline_interrupted baseline_id=%s", b.id)
        strays = list(_processes_naming(dirs))
        if strays:
            log.warning(
                "event=baseline_strays_stopped pids=%s", ",".join(str(p.pid) for p in strays)
            )
            _terminate_now(strays, grace_s=5.0)


# ---- checks before a job starts ----


def check_engine(engine: str) -> None:
    """ConfigError naming the extra to install when the engine's modules are missing."""
    for module in ENGINE_MODULES.get(engine, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(
                f"engine {engine!r} needs {module!r}, which this server does not have; install "
                "the llm extra where the server runs: pip install 'quorum-fl[llm]'"
            )


def check_task(ref: str) -> None:
    """TaskError unless the server can import `module:attribute` and it can train centralised
    (its ranks import it the same way)."""
    # Imported here, as the launcher is: it imports torch, which a server that runs no
    # baseline job (or only numpy tasks) need not hold in memory.
    from quorum.baseline.task import load_centralised_task

    load_centralised_task(ref)


# ---- files of a job ----


def _last_progress(out_dir: pathlib.Path) -> dict[str, Any] | None:
    """The last complete line of the worker's progress file (`launcher.PROGRESS_FILE`), read
    from the file's end: a long job's file grows with every logged step, and this runs on the
    server's event loop at every poll."""
    from quorum.baseline.launcher import PROGRESS_FILE

    try:
        with open(out_dir / PROGRESS_FILE, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return None
    complete = data[: data.rfind(b"\n") + 1].splitlines()  # a line being written is left out
    for line in reversed(complete):
        try:
            record = json.loads(line)
        except ValueError:  # the cut first line of the window, or a damaged one
            continue
        if isinstance(record, dict):
            return record
    return None


def _read_result(out_dir: pathlib.Path) -> dict[str, Any] | None:
    from quorum.baseline import launcher

    try:
        result = launcher.read_result(out_dir)
    except (OSError, ValueError, QuorumError):
        return None
    return None if result is None else dict(result)


def _log_tail(path: pathlib.Path, limit: int = LOG_TAIL_BYTES) -> str | None:
    """The last `limit` bytes of the log, from a line start where there is one."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError:
        return None
    if size > limit and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    return data.decode("utf-8", errors="replace")


# ---- processes ----


def _snapshot(job: _Job) -> None:
    """Adds the launcher and its current descendants to the job's tree."""
    try:
        root = psutil.Process(job.process.pid)
        found = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in found:
        job.tree.setdefault(p.pid, p)


def _alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


async def _terminate(
    processes: Iterable[psutil.Process], *, grace_s: float, signalled: bool = False
) -> None:
    """SIGTERM (unless already `signalled`), wait up to `grace_s`, SIGKILL what is left, and
    wait until every process is gone (zombies count as gone: their parent reaps them)."""
    procs = list(processes)
    if not signalled:
        _signal(_alive(procs), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(procs) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = _alive(procs)
    if left:
        _signal(left, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _terminate_now(procs: list[psutil.Process], *, grace_s: float) -> None:
    """`_terminate` for the server's start, before its event loop serves anything."""
    _signal(_alive(procs), signal.SIGTERM)
    _, left = psutil.wait_procs(_alive(procs), timeout=grace_s)
    _signal(left, signal.SIGKILL)
    psutil.wait_procs(_alive(procs), timeout=5.0)


def _signal(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def _processes_naming(dirs: list[str]) -> Iterable[psutil.Process]:
    """This user's processes whose command line names one of the jobs' folders."""
    uid = os.getuid()
    me = os.getpid()
    for p in psutil.process_iter(["cmdline", "uids"]):
        try:
            uids = p.info["uids"]
            cmdline = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if p.pid == me or uids is None or uids.real != uid:
            continue
        if any(d in arg for arg in cmdline for d in dirs):
            yield p


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"
