"""Process trees of a benchmark run: RSS/CPU sampling from /proc (psutil) and cleanup by PID.

Adapted from the reference kit's flbench_common.py: one pass over /proc per sample (not one per
root: with 25 sites that would cost a core on this 2-core machine), descendants found through
parent links, every process we started stopped by PID with its whole tree.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

MiB = 2**20


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    rss: int
    cpu: float
    name: str


def proc_table() -> dict[int, ProcInfo]:
    """pid -> parent, RSS, CPU seconds (self and reaped children) for every live process."""
    table: dict[int, ProcInfo] = {}
    for proc in psutil.process_iter(["ppid", "memory_info", "cpu_times", "name", "status"]):
        info = proc.info
        times = info["cpu_times"]
        if info["memory_info"] is None or times is None or info["status"] == psutil.STATUS_ZOMBIE:
            continue  # vanished, or not ours to read
        cpu = times.user + times.system + times.children_user + times.children_system
        table[proc.pid] = ProcInfo(info["ppid"], info["memory_info"].rss, cpu, info["name"] or "")
    return table


def descendants(table: dict[int, ProcInfo], roots: Iterable[int]) -> list[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    out: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in table:
            out.append(pid)
        stack.extend(children.get(pid, []))
    return out


@dataclass
class Sample:
    t: float
    rss: dict[str, int]
    cpu: dict[str, float]
    nproc: dict[str, int]
    busy: float = 0.0
    """CPU seconds the whole machine has been busy (all processes, since boot)."""


def machine_busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class Monitor:
    """Samples the summed RSS and CPU of named process trees ("roles") every `interval` s."""

    roots: dict[str, list[int]]
    interval: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    peak_proc_rss: dict[int, tuple[int, str, str]] = field(default_factory=dict)
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.samples.append(self.sample())

    def _loop(self) -> None:
        while not self._halt.is_set():
            self.samples.append(self.sample())
            self._halt.wait(self.interval)

    def sample(self) -> Sample:
        now = time.time()
        table = proc_table()
        out = Sample(now, {}, {}, {}, machine_busy())
        for role, roots in self.roots.items():
            pids = descendants(table, roots)
            out.rss[role] = sum(table[p].rss for p in pids)
            out.cpu[role] = sum(table[p].cpu for p in pids)
            out.nproc[role] = len(pids)
            for pid in pids:
                peak = self.peak_proc_rss.get(pid)
                if peak is None or table[pid].rss > peak[0]:
                    self.peak_proc_rss[pid] = (table[pid].rss, table[pid].name, role)
        return out

    def peak_rss(self, role: str) -> int:
        return max((s.rss.get(role, 0) for s in self.samples), default=0)

    def cpu_per_round(self, t0: float, t1: float, rounds: int) -> dict[str, float]:
        """CPU seconds per round between t0 and t1 (nearest samples): each role's tree, and
        "other", what the rest of the machine used (this harness, and anyone sharing it; a
        large value marks a run slowed down by someone else)."""
        if not self.samples or rounds <= 0:
            return {}
        first = min(self.samples, key=lambda s: abs(s.t - t0))
        last = min(self.samples, key=lambda s: abs(s.t - t1))
        out = {
            f"{role}_cpu_s_per_round": (last.cpu.get(role, 0.0) - first.cpu.get(role, 0.0)) / rounds
            for role in self.roots
        }
        out["other_cpu_s_per_round"] = (last.busy - first.busy) / rounds - sum(out.values())
        return out

    def top_processes(self, count: int = 8) -> list[dict[str, object]]:
        peaks = sorted(self.peak_proc_rss.items(), key=lambda kv: -kv[1][0])[:count]
        return [
            {"pid": pid, "name": name, "role": role, "rss_mb": rss / MiB}
            for pid, (rss, name, role) in peaks
        ]

    def timeline(self) -> list[dict[str, object]]:
        return [
            {"t": s.t, "rss": s.rss, "cpu": s.cpu, "nproc": s.nproc, "busy": s.busy}
            for s in self.samples
        ]


def vm_hwm(pid: int) -> int | None:
    """The kernel's own peak RSS of a live process (catches peaks between two samples)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_of(roots: Iterable[int]) -> list[int]:
    return descendants(proc_table(), roots)


def kill_tree(pids: Iterable[int], grace: float = 5.0) -> None:
    """SIGTERM to the given processes and their descendants, SIGKILL to what outlives `grace`."""
    targets = tree_of(pids)
    for pid in reversed(targets):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in targets):
        time.sleep(0.1)
    for pid in targets:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }
