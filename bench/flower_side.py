"""One Flower (flwr 1.42) run of the benchmark, the reference kit's way (bench_deploy.py).

`flower-superlink --insecure` and N `flower-supernode --insecure` (each its own partition-id
and ClientAppIo port), a SuperLink connection "bench" in $FLWR_HOME/config.toml, the app in
bench/flower_app submitted with `flwr run`. The ServerApp writes one mark per round to a JSON
file; the server side measured is the SuperLink's process tree (it spawns the ServerApp).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from typing import IO, Any

from bench.common import BENCH_DIR, ROUND_TIME_DEFINITION, VENV_BIN, RunSpec, child_env
from bench.procmon import MiB, Monitor, kill_tree, stats, vm_hwm
from quorum.ports import free_port

APP_DIR = BENCH_DIR / "flower_app"
ACTIVATED = re.compile(r"Activated node_id=")
RESULT_GRACE_S = 10.0
"""How long after the SuperLink saw the ServerApp end its result file may still appear."""


class RunFailed(RuntimeError):
    pass


class Launcher:
    """Starts Flower processes in their own sessions with logs in files, and stops them all."""

    def __init__(self, run_dir: pathlib.Path, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def launch(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.run_dir / f"{name}.log", "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.run_dir,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        kill_tree([p.pid for p in self.procs.values()])
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def write_connection(flwr_home: pathlib.Path, address: str) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "{address}"\n'
        "insecure = true\n"
    )


def start_nodes(spec: RunSpec, launcher: Launcher, address: str) -> None:
    for i in range(spec.nodes):
        port = free_port()
        launcher.launch(
            f"supernode{i}",
            [
                str(VENV_BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                address,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--node-config",
                f"partition-id={i} num-partitions={spec.nodes}",
            ],
        )


def wait_activated(
    log: pathlib.Path,
    nodes: int,
    timeout: float,
    procs: Mapping[str, subprocess.Popen[bytes]] | None = None,
) -> None:
    """Waits for `nodes` activations in the SuperLink's log; fails at once when one of `procs`
    (the SuperNodes) has exited."""
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        found = len(ACTIVATED.findall(log.read_text(errors="replace")))
        if found >= nodes:
            return
        dead = [name for name, proc in (procs or {}).items() if proc.poll() is not None]
        if dead:
            raise RunFailed(f"{', '.join(dead)} exited before activation (see their logs)")
        time.sleep(0.3)
    raise RunFailed(f"only {found}/{nodes} supernodes activated in {timeout:.0f} s")


def run_config_text(values: Mapping[str, int | float | str]) -> str:
    """`--run-config` text: numbers bare, strings quoted (TOML literals)."""
    return " ".join(
        f"{key}='{value}'" if isinstance(value, str) else f"{key}={value}"
        for key, value in values.items()
    )


def submit(
    spec: RunSpec,
    env: dict[str, str],
    run_dir: pathlib.Path,
    out_file: pathlib.Path,
    app_dir: pathlib.Path = APP_DIR,
    extra_config: Mapping[str, int | float | str] | None = None,
    federation_config: str | None = None,
) -> str:
    """Submits the app with `flwr run`; returns its run id. `federation_config` is passed as
    `--federation-config` (the simulation engine's `num-supernodes=N ...`)."""
    run_cfg = (
        f"num-params={spec.params} num-nodes={spec.nodes} num-rounds={spec.rounds} "
        f"out-file='{out_file}'"
    )
    if extra_config:
        run_cfg += " " + run_config_text(extra_config)
    done = flwr(
        env,
        run_dir,
        [
            "run",
            str(app_dir),
            "bench",
            "--run-config",
            run_cfg,
            "--format",
            "json",
            *(["--federation-config", federation_config] if federation_config else []),
        ],
        timeout=120,
    )
    (run_dir / "flwr_run.out").write_text(done.stdout + "\n---stderr---\n" + done.stderr)
    try:
        run_id = json.loads(done.stdout[done.stdout.index("{") :]).get("run-id")
    except ValueError:
        run_id = None
    if done.returncode != 0 or not run_id:
        raise RunFailed(
            f"flwr run failed rc={done.returncode}: {done.stdout[-800:]} {done.stderr[-800:]}"
        )
    return str(run_id)


def flwr(
    env: dict[str, str], run_dir: pathlib.Path, args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """The `flwr` command with `args`, its output captured; TimeoutExpired past `timeout` s."""
    return subprocess.run(
        [str(VENV_BIN / "flwr"), *args],
        env=env,
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_result(
    out_file: pathlib.Path,
    superlink: subprocess.Popen[bytes],
    deadline: float,
    superlink_log: pathlib.Path,
    run_id: str,
) -> None:
    """Waits for the ServerApp's result file. A ServerApp that failed (at N = 25 on 2 cores,
    an `ObjectPushError` in round 1) ends its run, which the SuperLink logs as "Finished task
    ... of run <id>": a run that finished without its result is failed then, not waited on
    until the deadline while its SuperNodes retry."""
    finished = f"of run {run_id}".encode()
    log_seen = 0
    ended_at: float | None = None
    while not out_file.exists():
        if superlink.poll() is not None:
            raise RunFailed("superlink exited")
        if time.monotonic() > deadline:
            raise RunFailed("timeout: no ServerApp result in time")
        if ended_at is None:
            with superlink_log.open("rb") as log:
                log.seek(log_seen)
                new = log.read()
            complete = new[: new.rfind(b"\n") + 1]  # a line being written is read next time
            log_seen += len(complete)
            if any(b"Finished task" in line and finished in line for line in complete.split(b"\n")):
                ended_at = time.monotonic()
        elif time.monotonic() - ended_at > RESULT_GRACE_S:
            raise RunFailed("the ServerApp ended without its result (see serverapp.log)")
        time.sleep(0.2)


def save_serverapp_log(env: dict[str, str], run_dir: pathlib.Path, run_id: str) -> None:
    """The ServerApp's log, for reading after the run: diagnostics only, so a `flwr log` that
    does not answer in time (a loaded machine) leaves a note in its place, not the run's
    figures lost and its processes left running."""
    try:
        done = flwr(env, run_dir, ["log", run_id, "bench", "--show"], timeout=30)
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        text = "flwr log did not answer in 30 s\n"
    (run_dir / "serverapp.log").write_text(text)


def summarise(
    spec: RunSpec, monitor: Monitor, serverapp: dict[str, Any], superlink_hwm: int | None
) -> dict[str, Any]:
    marks = serverapp["marks"]
    times = [marks[i]["t"] - marks[i - 1]["t"] for i in range(1, len(marks))]
    out: dict[str, Any] = {
        "round_times_s": times,
        "round_time_stats": stats(times[spec.warmup :]),
        "server_peak_rss_mb": monitor.peak_rss("server") / MiB,
        "clients_peak_rss_mb": monitor.peak_rss("clients") / MiB,
        "superlink_vmhwm_mb": (superlink_hwm or 0) / MiB,
        "serverapp_maxrss_mb": serverapp["serverapp_maxrss_kb"] / 1024,
        "final_mean_drift_arr0": serverapp["final_mean_drift_arr0"],
    }
    measured = len(times) - spec.warmup
    if measured > 0:
        out.update(monitor.cpu_per_round(marks[spec.warmup]["t"], marks[-1]["t"], measured))
    if "stages" in serverapp:  # the SecAgg+ app's per-stage wall times
        out["secagg_stages"] = serverapp["stages"]
    return out


def run(
    spec: RunSpec,
    app_dir: pathlib.Path = APP_DIR,
    extra_config: Mapping[str, int | float | str] | None = None,
    variant: str = "",
) -> dict[str, Any]:
    """One run of the app in `app_dir` (default: the FedAvg app); `extra_config` adds to its
    `--run-config`, `variant` to its tag, work folder and result file."""
    run_dir = spec.fresh_dir("flower", variant)
    flwr_home = run_dir / "flwr_home"
    port = free_port()
    address = f"127.0.0.1:{port}"
    write_connection(flwr_home, address)
    env = child_env(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
    )
    out_file = run_dir / "serverapp_result.json"
    result: dict[str, Any] = {
        "framework": "flower",
        "tag": spec.tag("flower", variant),
        "round_time_definition": ROUND_TIME_DEFINITION,
        "errors": [],
    }
    launcher = Launcher(run_dir, env)
    monitor: Monitor | None = None
    run_id: str | None = None
    superlink_hwm: int | None = None
    try:
        superlink = launcher.launch(
            "superlink",
            [
                str(VENV_BIN / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        )
        if not wait_http(f"http://{address}/health", 60):
            raise RunFailed("superlink did not become healthy in 60 s")
        start_nodes(spec, launcher, address)
        monitor = Monitor(
            {
                "server": [superlink.pid],
                "clients": [p.pid for n, p in launcher.procs.items() if n != "superlink"],
            },
            spec.interval_s,
        )
        monitor.start()
        supernodes = {n: p for n, p in launcher.procs.items() if n != "superlink"}
        wait_activated(run_dir / "superlink.log", spec.nodes, 180, supernodes)
        run_id = submit(spec, env, run_dir, out_file, app_dir, extra_config)
        wait_result(
            out_file,
            superlink,
            time.monotonic() + spec.timeout_s,
            run_dir / "superlink.log",
            run_id,
        )
        superlink_hwm = vm_hwm(superlink.pid)
    except Exception as exc:  # recorded in the JSON; the grid goes on with the next run
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        if monitor is not None:
            monitor.stop()
        try:
            if run_id is not None:
                save_serverapp_log(env, run_dir, run_id)
        finally:
            launcher.stop_all()
    if monitor is not None and out_file.exists():
        result.update(summarise(spec, monitor, json.loads(out_file.read_text()), superlink_hwm))
    if monitor is not None:
        result["top_process_peaks_mb"] = monitor.top_processes()
        result["samples"] = monitor.timeline()
    if extra_config:
        result["run_config"] = dict(extra_config)
    result["logs"] = str(run_dir)
    return result
