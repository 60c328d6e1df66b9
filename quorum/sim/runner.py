"""`quorum sim`: a real server process and site hosts, each running many virtual sites, on
loopback (or as Ray actors on a Ray cluster).

The simulation drives and watches the federation only through the public surfaces a user has:
the server config, the sites' own sessions, and the admin API, from which the report is built.
"""

from __future__ import annotations

import pathlib
import secrets
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import tomli_w
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quorum import identity
from quorum.admin.client import AdminClient
from quorum.client.faults import Crash
from quorum.config import ServerConfig, ServerFile, SimFile
from quorum.errors import ConfigError, QuorumError
from quorum.ports import free_port
from quorum.server.store import Store
from quorum.sim import hosts, partition, plan, pooled, report
from quorum.sim.host import HostSite, HostSpec
from quorum.task import HasBaselines, import_ref, load_task

FINAL_STATES = ("completed", "failed", "stopped")


def run_simulation(
    sim: SimFile,
    *,
    config_dir: pathlib.Path,
    report_path: pathlib.Path | None,
    console: Console,
    kills: Mapping[str, Crash] | None = None,
    slowdowns: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """`kills` names sites that vanish at a round and stage (not restarted); `slowdowns`,
    sites that train that many times slower."""
    task = load_task(sim.run.task)  # fail before starting anything
    kills, slowdowns = kills or {}, slowdowns or {}
    site_plan = plan.plan(sim, task, config_dir)
    names = {s.name for s in site_plan.sites}
    hostile = [s for s in site_plan.sites if s.attack is not None]
    if hostile:
        kinds = sorted({str(s.attack) for s in hostile})
        console.print(f"byzantine: {len(hostile)} hostile site(s) ({', '.join(kinds)})")
    for flag, named in (("--kill-site", kills), ("--slow-site", slowdowns)):
        unknown = sorted(set(named) - names)
        if unknown:
            raise ConfigError(f"{flag} names sites that are not in the simulation: {unknown[:5]}")
    baseline_spec = None
    if sim.sim.baselines:
        # Imported here: it imports torch, which a simulation without baselines need not load.
        from quorum.baseline.task import CentralisedTask

        if isinstance(import_ref(sim.run.task), CentralisedTask):
            baseline_spec = pooled.spec(sim)
        else:
            console.print(
                f"[yellow]task {sim.run.task!r} has no centralised-baseline interface "
                "(quorum.baseline.task.CentralisedTask): the report has no pooled line"
            )
    out = sim.sim.output_dir
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    state_dir = work / "state"
    token = secrets.token_urlsafe(24)
    fed_port, admin_port = free_port(), free_port()
    server_file = ServerFile(
        server=ServerConfig(
            **{
                **sim.server.model_dump(),
                "federation_address": f"127.0.0.1:{fed_port}",
                "admin_address": f"127.0.0.1:{admin_port}",
                "state_dir": state_dir.resolve(),
                "admin_token": token,
            }
        ),
    )
    partition_file = None
    if site_plan.parts is not None:
        partition_file = (work / "partition.safetensors").resolve()
        partition.save(partition_file, site_plan.parts)
    keys = {s.name: identity.generate() for s in site_plan.sites}
    store = Store(state_dir / "quorum.db")
    try:
        store.add_sites([(name, identity.public_bytes(key)) for name, key in keys.items()])
    finally:
        store.close()
    server_toml = work / "server.toml"
    server_toml.write_text(tomli_w.dumps(server_file.model_dump(mode="json", exclude_none=True)))

    shape = plan.layout(sim, len(site_plan.sites))
    specs = [
        HostSpec(
            host=k,
            server=f"127.0.0.1:{fed_port}",
            task=sim.run.task,
            device=sim.site.device,
            seed=sim.run.seed,
            slots=shape.slots,
            keep=shape.keep,
            data=sim.sim.data,
            partition=partition_file,
            site_dir=(work / "sites").resolve(),
            sites=[
                HostSite(
                    name=s.name,
                    key=identity.private_bytes(keys[s.name]).hex(),
                    data=s.data,
                    part=s.part,
                    dp=s.dp,
                    crash=str(kills[s.name]) if s.name in kills else None,
                    slowdown=slowdowns.get(s.name),
                    attack=str(s.attack) if s.attack is not None else None,
                    flower_app=s.flower_app,
                )
                for s in dealt
            ],
        )
        for k, dealt in enumerate(plan.deal(site_plan.sites, shape.hosts))
    ]
    logs = work / "logs"
    admin = AdminClient(f"http://127.0.0.1:{admin_port}", token)
    pool = ThreadPoolExecutor(max_workers=1)
    started = time.monotonic()
    fleet: hosts.Fleet | None = None
    try:
        fleet = hosts.start_server(server_toml, logs)
        _await_server(admin, sim, fleet, console, started)
        fleet.start_hosts(sim, specs, work)
        # The local-only baselines train in this process while the federation runs (torch
        # releases the GIL; the server and agents are mostly waiting on each other).
        pending = None
        if sim.sim.baselines and isinstance(task, HasBaselines) and site_plan.parts is None:
            # A Flower app's site has no data of the task's (its data is the app's node config).
            local_sites = {
                s.name: s.data
                for s in site_plan.sites
                if s.data is not None and s.flower_app is None
            }
            pending = pool.submit(
                pooled.local_baselines, task, local_sites, sim.site.device, sim.run.seed
            )
        # The pooled baseline is a baseline job of the server, like any operator's.
        job = pooled.submit(admin, baseline_spec) if baseline_spec is not None else None
        # The run starts once every site is connected, as an operator would submit it: else
        # its first round could start without a site still starting up (on a loaded machine,
        # longer than the round's wait_timeout_s) and the simulation would not be the one asked.
        _await_sites(admin, sim, fleet, len(site_plan.sites), console, started)
        admin.post("/api/v1/runs", sim.run.model_dump(mode="json", exclude_none=True))
        run = _follow(admin, sim, fleet, console, started)
        rounds = _all_rounds(admin, run["id"])
        for r in rounds:  # the uploads' bytes, on the wire and uncompressed, are the detail's
            if r["status"] == "completed":
                detail = admin.get(f"/api/v1/runs/{run['id']}/rounds/{r['round']}")
                r["bytes_in"] = detail["bytes_in"]
                r["bytes_in_uncompressed"] = detail["bytes_in_uncompressed"]
        privacy = admin.get(f"/api/v1/runs/{run['id']}/privacy")
        if job is not None:
            job = pooled.wait(admin, job, console, started + sim.sim.timeout_s)
        if pending is not None and not pending.done():
            console.print("finishing the local-only baselines…")
        baselines = pooled.section(job, pending.result() if pending is not None else None)
        server_peak = fleet.server.peak_rss_mb()
    finally:
        admin.close()
        if fleet is not None:
            fleet.stop()
        pool.shutdown(cancel_futures=True)

    assert fleet is not None  # else start() raised
    result = report.build(
        sim, run, rounds, baselines, privacy, site_plan, fleet.summaries(), server_peak
    )
    report_path = report_path or out / "report.json"
    report.write(result, report_path)
    if sim.sim.tensorboard is not None:
        report.tensorboard(result, sim.sim.tensorboard)
    Console(width=max(console.width, 100)).print(report.table(result, sim.sim.table_every))
    console.print(f"report: {report_path}  plot: {report_path.with_suffix('.png')}  logs: {logs}")
    if run["status"] != "completed":
        raise QuorumError(f"run {run['id']} ended {run['status']}: {run.get('error')}")
    return result


def _all_rounds(admin: AdminClient, run_id: str) -> list[dict[str, Any]]:
    """Every round record of the run (the API pages them by 1,000)."""
    rounds: list[dict[str, Any]] = []
    while True:
        page = admin.get(f"/api/v1/runs/{run_id}/rounds", offset=len(rounds), limit=1000)
        rounds.extend(page)
        if len(page) < 1000:
            return rounds


def _check(sim: SimFile, fleet: hosts.Fleet, started: float, when: str) -> None:
    """Fails when the server or a host has exited or the simulation has run out of time.
    Checked before asking the admin API: a dead server would otherwise surface as a connection
    error."""
    fleet.check(when)
    if time.monotonic() > started + sim.sim.timeout_s:
        raise QuorumError(f"simulation exceeded sim.timeout_s = {sim.sim.timeout_s:.0f} s")


def _await_server(
    admin: AdminClient, sim: SimFile, fleet: hosts.Fleet, console: Console, started: float
) -> None:
    """Waits until the admin API answers; a server that exits first fails with its log."""
    with console.status("starting the server…"):
        while True:
            _check(sim, fleet, started, "at start-up")
            try:
                admin.get("/api/v1/health")
                return
            except (httpx.TransportError, QuorumError):
                time.sleep(0.2)


def _await_sites(
    admin: AdminClient,
    sim: SimFile,
    fleet: hosts.Fleet,
    expected: int,
    console: Console,
    started: float,
) -> None:
    """Waits until every site of the simulation is connected; fails when a process exits
    first."""
    with console.status("waiting for the sites to connect…") as status:
        while True:
            _check(sim, fleet, started, "before the run started")
            connected = admin.get("/api/v1/health")["connected_sites"]
            if connected >= expected:
                return
            status.update(f"waiting for the sites to connect ({connected} of {expected})…")
            time.sleep(0.2)


def _follow(
    admin: AdminClient, sim: SimFile, fleet: hosts.Fleet, console: Console, started: float
) -> dict[str, Any]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(sim.run.name, total=sim.run.rounds, status="starting")
        failures = Failures(fleet, progress.console)
        while True:
            _check(sim, fleet, started, "before the run ended")
            runs = admin.get("/api/v1/runs")
            if runs:
                run: dict[str, Any] = runs[0]
                detail = _latest_round(admin, run)
                if detail is not None:
                    failures.check(detail)
                accuracy = _accuracy(detail) if run["rounds_completed"] else None
                status = run["status"] + (f" acc={accuracy:.3f}" if accuracy is not None else "")
                progress.update(bar, completed=run["rounds_completed"], status=status)
                if run["status"] in FINAL_STATES:
                    failures.summary()
                    return run
            time.sleep(0.25)


def _latest_round(admin: AdminClient, run: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the round in progress, else of the last one completed."""
    if run["status"] == "queued":
        return None
    try:
        detail: dict[str, Any] = admin.get(
            f"/api/v1/runs/{run['id']}/rounds/{run['rounds_completed'] + 1}"
        )
        return detail
    except QuorumError:  # not started yet, or the run is over
        if not run["rounds_completed"]:
            return None
        last: dict[str, Any] = admin.get(
            f"/api/v1/runs/{run['id']}/rounds/{run['rounds_completed']}"
        )
        return last


def _accuracy(detail: dict[str, Any] | None) -> float | None:
    if detail is None or detail["status"] != "completed":
        return None
    value = detail["metrics"].get("evaluate", {}).get("accuracy_mean_sites")
    return float(value) if value is not None else None


class Failures:
    """Sites whose task failed, told on the console: the first site with each distinct error in
    full (its error, the end of its traceback, its host's log), the next few in a line, the
    rest counted (a thousand sites failing alike must not bury the console)."""

    BRIEF = 3

    def __init__(self, fleet: hosts.Fleet, console: Console) -> None:
        self.fleet = fleet
        self.console = console
        self._seen: set[tuple[int, int, str]] = set()
        self._by_error: dict[str, int] = {}

    def check(self, detail: dict[str, Any]) -> None:
        for p in detail.get("participants", []):
            key = (detail["round"], detail["attempt"], p["site"])
            if p["status"] != "failed" or key in self._seen:
                continue
            self._seen.add(key)
            error = str(p.get("error"))
            count = self._by_error[error] = self._by_error.get(error, 0) + 1
            what = f"site {p['site']} failed its {p['kind']} task of round {detail['round']}"
            if count == 1:
                log_path, lines = self.fleet.traceback(p["site"])
                self.console.print(f"[red]{what}: {escape(error)}[/red]")
                if lines:
                    self.console.print(
                        "\n".join(f"    {line}" for line in lines), markup=False, soft_wrap=True
                    )
                self.console.print(f"    log: {log_path}", markup=False, soft_wrap=True)
            elif count <= 1 + self.BRIEF:
                self.console.print(f"[red]{what}[/red] (the same error)")

    def summary(self) -> None:
        for error, count in self._by_error.items():
            if count > 1 + self.BRIEF:
                self.console.print(f"[red]{count} failed tasks in all with: {escape(error)}")
