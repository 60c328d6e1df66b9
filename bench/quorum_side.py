"""One Quorum run of the benchmark: `quorum server start` and N `quorum client run`, on loopback.

Sites are registered straight into the server's store (as `quorum sim` does), the run is the
server config's only [[runs]] entry, and round times come from the admin API afterwards, so the
harness touches the server only through a 1 s status poll while rounds run.
"""

from __future__ import annotations

import itertools
import pathlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tomli_w

from bench.common import ROUND_TIME_DEFINITION, RunSpec, child_env
from bench.procmon import MiB, Monitor, kill_tree, stats, tree_of, vm_hwm
from bench.tasks import PARAMS_ENV
from quorum import identity
from quorum.admin.client import AdminClient
from quorum.ports import free_port
from quorum.server.checkpoints import Checkpoints
from quorum.server.store import Store
from quorum.sim import processes
from quorum.wire import blobs

TASK_REF = "bench.tasks:TASK"
FINAL_STATES = ("completed", "failed", "stopped")
POLL_S = 1.0
"""Status poll period: slow on purpose, each poll is work for the server's event loop."""


class RunFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Options:
    """What a run adds to the plain workload; the defaults add nothing (bench/round_time.py)."""

    variant: str = ""
    """Suffix of the run's tag, work folder and result file (e.g. "secagg")."""
    secagg: Mapping[str, Any] | None = None
    """The run's `secagg` table (`enabled`, `threshold`, `neighbours`, ...); None: plain."""
    crash_at: Mapping[int, str] = field(default_factory=dict)
    """Site index -> `ROUND:STAGE` passed to that site as `--crash-at` (SIGKILL there)."""
    run: Mapping[str, Any] = field(default_factory=dict)
    """More settings of the run's table (e.g. `mode = "async"`, `buffer_size`)."""
    server: Mapping[str, Any] = field(default_factory=dict)
    """More settings of the `[server]` table (e.g. `stream_window_kb`)."""


def register_sites(state_dir: pathlib.Path, keys: pathlib.Path, nodes: int) -> None:
    store = Store(state_dir / "quorum.db")
    try:
        for i in range(nodes):
            key = identity.generate()
            identity.write_keypair(key, keys / f"site{i}.key")
            store.add_site(f"site{i}", identity.public_bytes(key))
    finally:
        store.close()


def server_config(
    spec: RunSpec,
    state_dir: pathlib.Path,
    fed_port: int,
    admin_port: int,
    token: str,
    options: Options,
) -> dict[str, Any]:
    """Stock settings except what the workload fixes: all N sites every round, no evaluation,
    and what `options` adds: the run's `secagg` table, other `run` and `server` settings."""
    config: dict[str, Any] = {
        "server": {
            "federation_address": f"127.0.0.1:{fed_port}",
            "admin_address": f"127.0.0.1:{admin_port}",
            "state_dir": str(state_dir),
            "admin_token": token,
        },
        "runs": [
            {
                "name": "bench",
                "task": TASK_REF,
                "strategy": "fedavg",
                "rounds": spec.rounds,
                "min_fit_sites": spec.nodes,
                "min_available_sites": spec.nodes,
                "fraction_fit": 1.0,
                "fraction_evaluate": 0.0,
                "round_timeout_s": spec.timeout_s,
            }
        ],
    }
    if options.secagg is not None:
        config["runs"][0]["secagg"] = dict(options.secagg)
    config["runs"][0].update(options.run)
    config["server"].update(options.server)
    return config


def start_federation(
    spec: RunSpec,
    work: pathlib.Path,
    fed_port: int,
    children: list[processes.Child],
    crash_at: Mapping[int, str] | None = None,
) -> processes.Child:
    """Starts the server, then the sites; appends each to `children` as soon as it exists.
    `crash_at` gives a site (by index) a `--crash-at ROUND:STAGE`."""
    crash_at = crash_at or {}
    env = child_env({PARAMS_ENV: str(spec.params)})
    logs = work / "logs"
    server = processes.start(
        "server",
        ["server", "start", "--config", str(work / "server.toml"), "--insecure"],
        logs,
        env,
    )
    children.append(server)
    for i in range(spec.nodes):
        children.append(
            processes.start(
                f"site{i}",
                [
                    "client",
                    "run",
                    "--server",
                    f"127.0.0.1:{fed_port}",
                    "--site-key",
                    str(work / "keys" / f"site{i}.key"),
                    "--task",
                    TASK_REF,
                    "--data",
                    str(i),
                    "--device",
                    "cpu",
                    "--insecure",
                    *(["--crash-at", crash_at[i]] if i in crash_at else []),
                ],
                logs,
                env,
            )
        )
    return server


def follow(admin: AdminClient, server: processes.Child, deadline: float) -> dict[str, Any]:
    """Polls until the run ends; raises RunFailed on a dead server or the deadline."""
    while True:
        if not server.alive():
            raise RunFailed(f"quorum server exited early:\n{server.log_tail()}")
        runs = admin.get("/api/v1/runs")
        if runs and runs[0]["status"] in FINAL_STATES:
            run: dict[str, Any] = runs[0]
            return run
        if time.monotonic() > deadline:
            raise RunFailed("timeout: the run did not finish in time")
        time.sleep(POLL_S)


def round_times(rounds: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(completion-to-completion times, started_at-to-finished_at durations) per round.

    Round 1 has no previous completion; its entry is its own duration, which includes waiting
    for every site to join, and is the warm-up the statistics leave out."""
    done = sorted((r for r in rounds if r["status"] == "completed"), key=lambda r: r["round"])
    finished = [float(r["finished_at"]) for r in done]
    durations = [float(r["finished_at"]) - float(r["started_at"]) for r in done]
    between = [b - a for a, b in itertools.pairwise(finished)]
    return durations[:1] + between, durations


def stop_all(children: list[processes.Child]) -> None:
    """processes.stop for the direct children, then anything left of their trees, by PID."""
    pids = tree_of(c.process.pid for c in children)
    processes.stop(children)
    kill_tree(pids, grace=1.0)


def summarise(
    spec: RunSpec, monitor: Monitor, rounds: list[dict[str, Any]], server_hwm: int | None
) -> dict[str, Any]:
    times, durations = round_times(rounds)
    done = sorted((r for r in rounds if r["status"] == "completed"), key=lambda r: r["round"])
    out: dict[str, Any] = {
        "round_times_s": times,
        "round_durations_s": durations,
        "round_time_stats": stats(times[spec.warmup :]),
        "server_peak_rss_mb": monitor.peak_rss("server") / MiB,
        "server_vmhwm_mb": (server_hwm or 0) / MiB,
        "clients_peak_rss_mb": monitor.peak_rss("clients") / MiB,
    }
    measured = len(times) - spec.warmup
    if measured > 0:
        t0 = float(done[spec.warmup - 1]["finished_at"] if spec.warmup else done[0]["started_at"])
        out.update(monitor.cpu_per_round(t0, float(done[-1]["finished_at"]), measured))
    return out


def secagg_records(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round's `secagg` record (cohort, threshold, per-stage times, dropouts), if any."""
    return [
        {"round": d["round"], **d["secagg"]}
        for d in details
        if isinstance(d, dict) and d.get("secagg")
    ]


def final_mean_drift(state_dir: pathlib.Path, run_id: str, last_round: int) -> float | None:
    """Mean of (final - initial) over the model's first tensor, from the server's checkpoints:
    the same check as the Flower apps' `final_mean_drift_arr0` (FedAvg of the sites' constant
    steps; SecAgg+ quantises, so it matches to about 1e-5 there)."""
    checkpoints = Checkpoints(state_dir / "checkpoints")
    try:
        first = blobs.decode(checkpoints.model_path(run_id, 0).read_bytes())
        final = blobs.decode(checkpoints.model_path(run_id, last_round).read_bytes())
    except OSError:
        return None
    name = next(iter(first))
    return float(np.mean(final[name].astype(np.float64) - first[name]))


def run(spec: RunSpec, options: Options | None = None) -> dict[str, Any]:
    options = options or Options()
    work = spec.fresh_dir("quorum", options.variant)
    state_dir = work / "state"
    register_sites(state_dir, work / "keys", spec.nodes)
    fed_port, admin_port = free_port(), free_port()
    token = secrets.token_urlsafe(24)
    (work / "server.toml").write_text(
        tomli_w.dumps(server_config(spec, state_dir, fed_port, admin_port, token, options))
    )
    result: dict[str, Any] = {
        "framework": "quorum",
        "tag": spec.tag("quorum", options.variant),
        "round_time_definition": ROUND_TIME_DEFINITION,
        "errors": [],
    }
    children: list[processes.Child] = []
    monitor: Monitor | None = None
    admin = AdminClient(f"http://127.0.0.1:{admin_port}", token)
    t_launch = time.monotonic()
    rounds: list[dict[str, Any]] = []
    server_hwm: int | None = None
    try:
        server = start_federation(spec, work, fed_port, children, options.crash_at)
        monitor = Monitor(
            {"server": [server.process.pid], "clients": [c.process.pid for c in children[1:]]},
            spec.interval_s,
        )
        monitor.start()
        admin.wait_ready(60)
        result["startup"] = {"admin_ready_s": time.monotonic() - t_launch}
        run_info = follow(admin, server, t_launch + spec.timeout_s)
        result["run"] = {k: run_info[k] for k in ("id", "status", "error", "rounds_completed")}
        rounds = admin.get(f"/api/v1/runs/{run_info['id']}/rounds", limit=1000)
        # Per-site offer/finish times, for finding where a slow round spent its time.
        result["round_details"] = [
            admin.get(f"/api/v1/runs/{run_info['id']}/rounds/{r['round']}") for r in rounds
        ]
        if options.secagg is not None:
            result["secagg_settings"] = dict(options.secagg)
            result["crash_at"] = {f"site{i}": point for i, point in options.crash_at.items()}
            result["secagg_rounds"] = secagg_records(result["round_details"])
        server_hwm = vm_hwm(server.process.pid)
        result["sites_vmhwm_mb"] = [(vm_hwm(c.process.pid) or 0) / MiB for c in children[1:]]
        result["final_mean_drift_arr0"] = final_mean_drift(
            state_dir, run_info["id"], int(run_info["rounds_completed"])
        )
        if run_info["status"] != "completed":
            raise RunFailed(f"run ended {run_info['status']}: {run_info.get('error')}")
    except Exception as exc:  # recorded in the JSON; the grid goes on with the next run
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        admin.close()
        if monitor is not None:
            monitor.stop()
        stop_all(children)
    if monitor is not None:
        result.update(summarise(spec, monitor, rounds, server_hwm))
        result["top_process_peaks_mb"] = monitor.top_processes()
        result["samples"] = monitor.timeline()
    result["logs"] = str(work / "logs")
    return result
