"""Simulation benchmark: Quorum's `quorum sim` against Flower's simulation engine (Ray backend).

The same workload on both sides: P float32 parameters (default 100K), trivial local training
(bench/flower_app's fedavg_bench app, and `bench.tasks:TASK` for Quorum), FedAvg with no
evaluation, 6 rounds of which the first is a warm-up. For each scenario it runs Quorum, then
Flower, never at once, and prints a markdown table of the median round time and the peak total
memory (the sum of RSS over every process of that framework, sampled from /proc every 0.25 s as
bench/procmon.py does) with Flower/Quorum ratios.

Scenarios: a = 100 sites, all in every round; b = 1,000 sites, a cohort of 100 per round;
c = 10,000 sites, a cohort of 100. m = real training: examples/mnist/sim.toml (the MNIST CNN, 100
sites of a Dirichlet(0.5) split, 10 per round) with the bench's rounds, no baselines and no
evaluation; Flower runs bench/flower_mnist_app, whose nodes train the same sites alike.

    python bench/sim_time.py --json bench/results/sim_time.json          # scenarios a and b
    python bench/sim_time.py --scenarios c --only quorum
    python bench/sim_time.py --scenarios m --json bench/results/sim_time_mnist.json
    python bench/sim_time.py --quorum-set sim.hosts=4 --flower-client-cpus 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import tomli_w

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import flower_side
from bench.common import (
    REPO,
    VENV_BIN,
    WORK_DIR,
    RunSpec,
    child_env,
    quorum_revision,
    stop_on_sigterm,
    write_json,
)
from bench.procmon import MiB, Monitor, kill_tree, stats
from bench.tasks import PARAMS_ENV
from quorum.ports import free_port

TASK_REF = "bench.tasks:TASK"
MARKER_ENV = "QUORUM_SIM_BENCH_RUN"
"""Set to a fresh id in every process a run starts; its descendants inherit it, so processes
that left the sampled tree (re-parented to init, as daemons do) can still be found by PID."""
ROUND_TIME_DEFINITION = (
    "interval between successive round completions (Quorum: consecutive differences of the "
    "report's rounds[k].wall_time_s; Flower: successive evaluate_fn marks), median over the "
    "rounds after the warm-up"
)
MEMORY_DEFINITION = (
    "largest sum of RSS over the framework's whole process tree, sampled from /proc (Quorum: "
    "`quorum sim` and everything it starts; Flower: `flower-superlink --simulation` and what it "
    "spawns: SuperExec, flwr-simulation, Ray's GCS, raylet and workers)"
)


@dataclass(frozen=True)
class Scenario:
    key: str
    sites: int
    cohort: int | None
    """Sites trained per round; None: every site."""
    sim_toml: pathlib.Path | None = None
    """A sim.toml to run (its task, data, partition and fit settings) instead of the generated
    bench config; its site count and cohort must be `sites` and `cohort`."""
    flower_app: pathlib.Path = flower_side.APP_DIR
    workload: str = "bench task"

    @property
    def label(self) -> str:
        cohort = "all" if self.cohort is None else f"{self.cohort}"
        return f"({self.key}) {self.workload}, N={self.sites:,}, cohort {cohort}"


MNIST_SIM_TOML = REPO / "examples" / "mnist" / "sim.toml"
SCENARIOS = {
    "a": Scenario("a", 100, None),
    "b": Scenario("b", 1_000, 100),
    "c": Scenario("c", 10_000, 100),
    "m": Scenario(
        "m",
        100,
        10,
        sim_toml=MNIST_SIM_TOML,
        flower_app=pathlib.Path(__file__).resolve().parent / "flower_mnist_app",
        workload="MNIST CNN",
    ),
}


@dataclass(frozen=True)
class SimSpec:
    params: int
    rounds: int
    """Total rounds, warm-up included."""
    warmup: int
    timeout_s: float
    interval_s: float


class RunFailed(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Shared: process bookkeeping and round times
# ---------------------------------------------------------------------------------------------


def marked_pids(marker: str) -> list[int]:
    """Live processes carrying MARKER_ENV=marker (only our own processes' environ is readable)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER_ENV) == marker:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def sweep(marker: str, result: dict[str, Any]) -> None:
    """Stops every process of the run that outlived its tree's stop, by PID, and records them:
    one here means the tree (and so the memory figure) missed a process."""
    left = [p for p in marked_pids(marker) if p != os.getpid()]
    if left:
        names = []
        for pid in left:
            try:
                names.append(psutil.Process(pid).name())
            except psutil.Error:
                continue
        result["stray_processes"] = names
        kill_tree(left, grace=2.0)


def times_from_completions(completions: list[float]) -> list[float]:
    """Per-round times from the completion times of rounds 1..R, measured from the run's start
    (so round 1's time includes start-up and is the warm-up the statistics drop)."""
    return [b - a for a, b in zip([0.0, *completions], completions, strict=False)]


def memory_summary(monitor: Monitor, role: str) -> dict[str, Any]:
    peak = max(monitor.samples, key=lambda s: s.rss.get(role, 0), default=None)
    return {
        "peak_total_rss_mb": monitor.peak_rss(role) / MiB,
        "processes_at_peak": peak.nproc.get(role, 0) if peak else 0,
        "max_processes": max((s.nproc.get(role, 0) for s in monitor.samples), default=0),
        "top_process_peaks_mb": monitor.top_processes(),
    }


def wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> int:
    """The process's exit status; RunFailed (process left running) past the deadline."""
    while True:
        rc = proc.poll()
        if rc is not None:
            return rc
        if time.monotonic() > deadline:
            raise RunFailed("timeout: the simulation did not finish in time")
        time.sleep(0.5)


def log_tail(path: pathlib.Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Quorum: `quorum sim`
# ---------------------------------------------------------------------------------------------


def quorum_sim_config(
    scenario: Scenario, spec: SimSpec, output_dir: pathlib.Path, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """The sim.toml of a scenario: stock settings except what the workload fixes (the cohort, no
    evaluation, no baselines, generous waits); or the scenario's own sim.toml with the bench's
    rounds, no evaluation and no baselines. `overrides` are `section.key=TOML-value`."""
    config = (
        given_sim_config(scenario, spec, output_dir)
        if scenario.sim_toml is not None
        else generated_sim_config(scenario, spec, output_dir)
    )
    for item in overrides:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2:
            raise SystemExit(f"--quorum-set {item!r}: expected section.key=value")
        table = config
        for part in path[:-1]:
            table = table.setdefault(part, {})
        table[path[-1]] = tomllib.loads(f"v = {raw}")["v"]
    return config


def given_sim_config(scenario: Scenario, spec: SimSpec, output_dir: pathlib.Path) -> dict[str, Any]:
    """The scenario's sim.toml as the bench runs it: its rounds, its sim timeout and output, no
    baseline jobs and no federated evaluation (the Flower side evaluates nothing either)."""
    assert scenario.sim_toml is not None
    config = tomllib.loads(scenario.sim_toml.read_text())
    sim, run = config["sim"], config["run"]
    # The server's cohort size (quorum/server/sync_driver.py's _sample) with every site connected.
    sites, fraction = int(sim["num_sites"]), float(run.get("fraction_fit", 1.0))
    cohort = max(math.ceil(sites * fraction), int(run.get("min_fit_sites", 1)))
    cohort = min(cohort, int(run.get("max_fit_sites", cohort)))
    if sites != scenario.sites or cohort != (scenario.cohort or sites):
        raise SystemExit(
            f"{scenario.sim_toml}: {sites} sites, {cohort} per round; scenario {scenario.key} "
            f"expects {scenario.sites} and {scenario.cohort}"
        )
    sim.update(baselines=False, timeout_s=spec.timeout_s, output_dir=str(output_dir))
    run.update(rounds=spec.rounds, fraction_evaluate=0.0)
    return config


def generated_sim_config(
    scenario: Scenario, spec: SimSpec, output_dir: pathlib.Path
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "name": "sim-bench",
        "task": TASK_REF,
        "rounds": spec.rounds,
        "fraction_evaluate": 0.0,
        "wait_timeout_s": 300.0,
        "round_timeout_s": 300.0,
    }
    if scenario.cohort is None:
        run.update(fraction_fit=1.0, min_fit_sites=scenario.sites)
    else:
        run.update(max_fit_sites=scenario.cohort, min_fit_sites=scenario.cohort)
    config: dict[str, Any] = {
        "sim": {
            "num_sites": scenario.sites,
            # Each site's --data is its partition id, which bench.tasks reads as Flower's
            # partition-id, so both sides perturb the model alike.
            "site_data": "{index}",
            "baselines": False,
            "timeout_s": spec.timeout_s,
            "output_dir": str(output_dir),
        },
        "server": {},
        "run": run,
    }
    return config


def run_quorum(
    scenario: Scenario,
    spec: SimSpec,
    work: pathlib.Path,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """One `quorum sim` run of a scenario in `work` (emptied first): writes sim.toml, runs
    `quorum sim --config sim.toml --report work/report.json` under the sampler, and takes the
    round times from the report. Never raises for a failed run: errors go to result["errors"]."""
    _fresh(work)
    config = quorum_sim_config(scenario, spec, work / "sim-output", overrides)
    config_path = work / "sim.toml"
    config_path.write_text(tomli_w.dumps(config))
    report_path = work / "report.json"
    log_path = work / "quorum-sim.log"
    marker = uuid.uuid4().hex
    env = child_env({PARAMS_ENV: str(spec.params), MARKER_ENV: marker})
    result: dict[str, Any] = {"framework": "quorum", "config": config, "errors": []}
    monitor: Monitor | None = None
    proc: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                [
                    str(VENV_BIN / "quorum"),
                    "sim",
                    "--config",
                    str(config_path),
                    "--report",
                    str(report_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work,
                start_new_session=True,
            )
            monitor = Monitor({"quorum": [proc.pid]}, spec.interval_s)
            monitor.start()
            # The sim bounds itself by sim.timeout_s; the margin covers its start and teardown.
            rc = wait_exit(proc, started + spec.timeout_s + 120)
            result["exit_status"] = rc
            if rc != 0:
                raise RunFailed(f"quorum sim exited {rc}:\n{log_tail(log_path)}")
        except Exception as exc:  # recorded in the JSON; the next run goes on
            result["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            if monitor is not None:
                monitor.stop()
            if proc is not None:
                kill_tree([proc.pid])
                proc.wait()
            sweep(marker, result)
    result["wall_s"] = time.monotonic() - started
    if monitor is not None:
        result.update(memory_summary(monitor, "quorum"))
        result["samples"] = monitor.timeline()
    if report_path.exists():
        result.update(quorum_rounds(json.loads(report_path.read_text()), spec))
        if not result["errors"] and (
            result["run_status"] != "completed" or result["rounds_completed"] < spec.rounds
        ):
            result["errors"].append(
                f"RunFailed: run {result['run_status']} with "
                f"{result['rounds_completed']}/{spec.rounds} rounds completed"
            )
    elif not result["errors"]:
        result["errors"].append(f"RunFailed: no report at {report_path}")
    result["logs"] = str(work)
    return result


def quorum_rounds(report: dict[str, Any], spec: SimSpec) -> dict[str, Any]:
    """Round times from the report's completed rounds (`wall_time_s`: seconds from the run's
    start to the end of that round)."""
    rounds = sorted(report.get("rounds", []), key=lambda r: int(r["round"]))
    times = times_from_completions([float(r["wall_time_s"]) for r in rounds])
    out: dict[str, Any] = {
        "run_status": report.get("status"),
        "rounds_completed": len(rounds),
        "round_times_s": times,
        "round_time_stats": stats(times[spec.warmup :]),
        "sites_per_round": [r.get("num_sites") for r in rounds],
        # The cohort's example-weighted mean training loss (the bench task reports none).
        "fit_loss": [r.get("fit_loss") for r in rounds],
        "aborted_rounds": report.get("aborted_rounds", []),
        # Each process's own peak (the server's VmHWM, each host's ru_maxrss): what a
        # registered site costs at the server and at the hosts.
        "server_peak_rss_mb": report.get("server_peak_rss_mb"),
        "hosts_peak_rss_mb": sum(h.get("peak_rss_mb") or 0.0 for h in report.get("hosts", [])),
    }
    return out


# ---------------------------------------------------------------------------------------------
# Flower: `flower-superlink --simulation` + `flwr run --federation-config num-supernodes=N`
# ---------------------------------------------------------------------------------------------


def run_flower(
    scenario: Scenario, spec: SimSpec, work: pathlib.Path, client_cpus: float | None = None
) -> dict[str, Any]:
    """One run of bench/flower_app on Flower's simulation engine, the reference kit's way
    (bench_deploy.py --simulation): a SuperLink with --simulation, the app submitted with
    `--federation-config "num-supernodes=N"` and the run-config key `cohort`. `client_cpus` is
    the Ray backend's `client-resources-num-cpus` (None: Flower's default, 2)."""
    _fresh(work)
    flwr_home = work / "flwr_home"
    port = free_port()
    address = f"127.0.0.1:{port}"
    flower_side.write_connection(flwr_home, address)
    marker = uuid.uuid4().hex
    # Ray's session folder holds Unix sockets, whose paths must stay under 108 bytes: a short
    # folder in /tmp rather than one under the work folder.
    ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="simbench-ray-"))
    env = child_env(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_TMPDIR": str(ray_tmp),
            # Ray then takes 127.0.0.1 as the node IP, so its GCS, raylet and workers listen on
            # loopback only (as in the reference kit).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            MARKER_ENV: marker,
        }
    )
    federation = f"num-supernodes={scenario.sites}"
    if client_cpus is not None:
        federation += f" client-resources-num-cpus={client_cpus:g}"
    extra = flower_run_config(scenario)
    run_spec = RunSpec(
        spec.params, scenario.sites, spec.rounds, spec.warmup, spec.timeout_s, spec.interval_s
    )
    out_file = work / "serverapp_result.json"
    result: dict[str, Any] = {
        "framework": "flower",
        "federation_config": federation,
        "run_config_extra": extra,
        "errors": [],
    }
    launcher = flower_side.Launcher(work, env)
    monitor: Monitor | None = None
    run_id: str | None = None
    started = time.monotonic()
    try:
        superlink = launcher.launch(
            "superlink",
            [
                str(VENV_BIN / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        )
        monitor = Monitor({"flower": [superlink.pid]}, spec.interval_s)
        monitor.start()
        if not flower_side.wait_http(f"http://{address}/health", 60):
            raise RunFailed("superlink did not become healthy in 60 s")
        run_id = flower_side.submit(
            run_spec,
            env,
            work,
            out_file,
            app_dir=scenario.flower_app,
            extra_config=extra,
            federation_config=federation,
        )
        flower_side.wait_result(
            out_file, superlink, started + spec.timeout_s, work / "superlink.log", run_id
        )
    except Exception as exc:  # recorded in the JSON; the next run goes on
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        if monitor is not None:
            monitor.stop()
        if run_id is not None:
            flower_side.save_serverapp_log(env, work, run_id)
        launcher.stop_all()
        sweep(marker, result)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result["wall_s"] = time.monotonic() - started
    if monitor is not None:
        result.update(memory_summary(monitor, "flower"))
        result["samples"] = monitor.timeline()
    if out_file.exists():
        serverapp = json.loads(out_file.read_text())
        marks = serverapp["marks"]
        # Mark 0 is taken before round 1, so the first interval is round 1 (the warm-up).
        times = [marks[i]["t"] - marks[i - 1]["t"] for i in range(1, len(marks))]
        result.update(
            round_times_s=times,
            round_time_stats=stats(times[spec.warmup :]),
            serverapp_maxrss_mb=serverapp["serverapp_maxrss_kb"] / 1024,
            # bench/flower_app's check of its trivial training; the MNIST app's training loss.
            final_mean_drift_arr0=serverapp.get("final_mean_drift_arr0"),
            fit_loss=serverapp.get("train_loss"),
            cohort=serverapp.get("cohort"),
            sampled_per_round=sampled_per_round(work / "serverapp.log"),
        )
    result["logs"] = str(work)
    return result


def flower_run_config(scenario: Scenario) -> dict[str, int | float | str]:
    """The app's run-config keys beyond the run's shape: the cohort and, for a scenario with a
    sim.toml, the settings its Quorum run trains with, read from that file so that both sides
    agree by construction (the partition seed defaults to the run's, as in quorum/sim/plan.py)."""
    extra: dict[str, int | float | str] = {"cohort": scenario.cohort or 0}
    if scenario.sim_toml is None:
        return extra
    config = tomllib.loads(scenario.sim_toml.read_text())
    run, part = config["run"], config["sim"]["partition"]
    fit = run["site_config"]
    if part["kind"] != "dirichlet" or config["sim"]["data"] != "mnist":
        raise SystemExit(f"{scenario.sim_toml}: the Flower app splits MNIST by Dirichlet only")
    seed = int(run.get("seed", 0))
    extra.update(
        {
            "seed": seed,
            "partition-seed": int(part.get("seed", seed)),
            "alpha": float(part["alpha"]),
            "local-epochs": int(fit["local_epochs"]),
            "batch-size": int(fit["batch_size"]),
            "lr": float(fit["lr"]),
        }
    )
    return extra


def sampled_per_round(log: pathlib.Path) -> list[str]:
    """FedAvg's own `configure_train: Sampled K nodes (out of N)` lines: proof of the cohort."""
    lines = log_tail(log, 10_000_000).splitlines()
    return [
        line.split("configure_train:", 1)[1].strip()
        for line in lines
        if "configure_train: Sampled" in line
    ]


# ---------------------------------------------------------------------------------------------
# Driver and table
# ---------------------------------------------------------------------------------------------


def _fresh(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--scenarios",
        nargs="+",
        choices=sorted(SCENARIOS),
        default=["a", "b"],
        help="a: N=100 all; b: N=1,000 cohort 100; c: N=10,000 cohort 100 (default: a b)",
    )
    ap.add_argument("--only", choices=("quorum", "flower"), help="run one framework")
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--interval", type=float, default=0.25, help="RSS sampling period (s)")
    ap.add_argument(
        "--flower-client-cpus",
        type=float,
        default=None,
        help="Ray's client-resources-num-cpus (default: Flower's own, 2 per virtual client)",
    )
    ap.add_argument(
        "--quorum-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a sim.toml setting (TOML value), e.g. sim.hosts=4; repeatable",
    )
    ap.add_argument("--json", type=pathlib.Path, help="write every result here")
    args = ap.parse_args(argv)
    if args.rounds - args.warmup < 3:
        ap.error("need at least 3 measured rounds (--rounds - --warmup >= 3)")
    return args


def run_all(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    spec = SimSpec(args.params, args.rounds, args.warmup, args.timeout, args.interval)
    runners: dict[str, Callable[[Scenario, pathlib.Path], dict[str, Any]]] = {
        "quorum": lambda s, w: run_quorum(s, spec, w, args.quorum_set),
        "flower": lambda s, w: run_flower(s, spec, w, args.flower_client_cpus),
    }
    frameworks = [args.only] if args.only else ["quorum", "flower"]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for key in args.scenarios:
        scenario = SCENARIOS[key]
        for framework in frameworks:
            print(f"# {scenario.label}: {framework} ...", file=sys.stderr, flush=True)
            load_before = os.getloadavg()
            work = WORK_DIR / f"sim_{framework}_P{args.params}_{key}"
            result = runners[framework](scenario, work)
            # The machine is shared: a high load average marks a run whose times are inflated.
            result.update(
                scenario={
                    k: str(v) if isinstance(v, pathlib.Path) else v
                    for k, v in asdict(scenario).items()
                },
                loadavg_before=load_before,
                loadavg_after=os.getloadavg(),
            )
            results.setdefault(key, {})[framework] = result
            print(
                f"#   median round {_fmt(_median(result), '.3f')} s, peak memory "
                f"{_fmt(result.get('peak_total_rss_mb'), '.0f')} MB, errors {result['errors']}",
                file=sys.stderr,
                flush=True,
            )
    return results


def _median(result: dict[str, Any] | None) -> float | None:
    if not result or result.get("errors"):
        return None
    value = result.get("round_time_stats", {}).get("median")
    return float(value) if value is not None else None


def _memory(result: dict[str, Any] | None) -> float | None:
    if not result or result.get("errors"):
        return None
    value = result.get("peak_total_rss_mb")
    return float(value) if value is not None else None


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _ratio(num: float | None, den: float | None) -> str:
    return "—" if num is None or not den else f"{num / den:.1f}×"


def table(results: dict[str, dict[str, dict[str, Any]]], params: int) -> str:
    lines = [
        f"Bench task: P = {params:,} float32 parameters, trivial local training. MNIST CNN: "
        "examples/mnist/sim.toml's CNN, partition and fit settings on both sides. FedAvg, no "
        "evaluation.",
        "",
        "| scenario | Flower round (s) | Quorum round (s) | Flower/Quorum time "
        "| Flower peak memory (MB) | Quorum peak memory (MB) | Flower/Quorum memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for key, runs in results.items():
        fl, qu = runs.get("flower"), runs.get("quorum")
        ft, qt, fm, qm = _median(fl), _median(qu), _memory(fl), _memory(qu)
        lines.append(
            f"| {SCENARIOS[key].label} | {_fmt(ft, '.3f')} | {_fmt(qt, '.3f')} | {_ratio(ft, qt)} "
            f"| {_fmt(fm, '.0f')} | {_fmt(qm, '.0f')} | {_ratio(fm, qm)} |"
        )
        for name, run in (("Flower", fl), ("Quorum", qu)):
            if run and run.get("errors"):
                notes.append(f"- ({key}) {name} did not finish: {_first_line(run['errors'][0])}")
    lines += per_site_memory(results)
    lines += ["", f"Round time: {ROUND_TIME_DEFINITION}.", f"Peak memory: {MEMORY_DEFINITION}."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def per_site_memory(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Quorum's server and hosts' own peaks per scenario, and what one more registered site
    costs at each: the slope between the scenarios with the fewest and the most sites."""
    runs = [
        (SCENARIOS[key].sites, run)
        for key, by in results.items()
        if (run := by.get("quorum")) and not run.get("errors") and run.get("server_peak_rss_mb")
    ]
    if not runs:
        return []
    lines = [
        "",
        "| Quorum | sites | server peak (MB) | hosts' peaks, summed (MB) |",
        "|---|---:|---:|---:|",
    ]
    for sites, run in sorted(runs, key=lambda r: r[0]):
        lines.append(
            f"| | {sites:,} | {run['server_peak_rss_mb']:.0f} | {run['hosts_peak_rss_mb']:.0f} |"
        )
    (low, a), (high, b) = min(runs, key=lambda r: r[0]), max(runs, key=lambda r: r[0])
    if high > low:
        server = (b["server_peak_rss_mb"] - a["server_peak_rss_mb"]) / (high - low) * 1024
        hosts = (b["hosts_peak_rss_mb"] - a["hosts_peak_rss_mb"]) / (high - low) * 1024
        lines.append(
            f"\nPer registered site (from {low:,} to {high:,} sites): {server:.0f} KB at the "
            f"server, {hosts:.0f} KB at the hosts."
        )
    return lines


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else text


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    started = time.time()
    results = run_all(args)
    text = table(results, args.params)
    print(text)
    if args.json is not None:
        write_json(
            args.json,
            {
                "benchmark": "sim_time",
                "params": args.params,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "round_time_definition": ROUND_TIME_DEFINITION,
                "memory_definition": MEMORY_DEFINITION,
                "quorum_revision": quorum_revision(),
                "machine": {
                    "cpus": os.cpu_count(),
                    "memory_gib": psutil.virtual_memory().total / 2**30,
                    "python": platform.python_version(),
                },
                "started_unix": started,
                "finished_unix": time.time(),
                "table": text,
                "results": results,
            },
        )
    failed = [k for runs in results.values() for k, r in runs.items() if r.get("errors")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
