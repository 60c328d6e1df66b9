"""`quorum sim`: a real server process and one site-agent process per site, on loopback.

The simulation drives and watches the federation only through the public surfaces a user has:
the server config, `quorum client run`, and the admin API, from which the report is built.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tomli_w
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quorum import identity
from quorum.admin.client import AdminClient
from quorum.client.faults import Crash
from quorum.config import ServerConfig, ServerFile, SimFile, SimSite, resolve_data
from quorum.errors import ConfigError, QuorumError
from quorum.ports import free_port
from quorum.server.store import Store
from quorum.sim import pooled, processes, report
from quorum.task import HasBaselines, load_task

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
    """`kills` names sites whose process is SIGKILLed at a round and stage (not restarted);
    `slowdowns`, sites that train that many times slower."""
    task = load_task(sim.run.task)  # fail before starting anything
    baseline_spec = pooled.spec(sim) if sim.sim.baselines else None
    kills, slowdowns = kills or {}, slowdowns or {}
    names = {s.name for s in sim.sites}
    for flag, named in (("--kill-site", kills), ("--slow-site", slowdowns)):
        unknown = sorted(set(named) - names)
        if unknown:
            raise ConfigError(f"{flag} names sites that are not in the simulation: {unknown}")
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
    store = Store(state_dir / "quorum.db")
    keys = work / "keys"
    for site in sim.sites:
        key = identity.generate()
        identity.write_keypair(key, keys / f"{site.name}.key")
        store.add_site(site.name, identity.public_bytes(key))
    store.close()
    server_toml = work / "server.toml"
    server_toml.write_text(tomli_w.dumps(server_file.model_dump(mode="json", exclude_none=True)))

    logs = work / "logs"
    children: list[processes.Child] = []
    admin = AdminClient(f"http://127.0.0.1:{admin_port}", token)
    pool = ThreadPoolExecutor(max_workers=1)
    started = time.monotonic()
    try:
        server = processes.start(
            "server", ["server", "start", "--config", str(server_toml), "--insecure"], logs
        )
        children.append(server)
        for site in sim.sites:
            children.append(
                processes.start(
                    f"site-{site.name}",
                    [
                        "client",
                        "run",
                        "--server",
                        f"127.0.0.1:{fed_port}",
                        "--site-key",
                        str(keys / f"{site.name}.key"),
                        "--task",
                        sim.run.task,
                        "--data",
                        resolve_data(site.data, config_dir),
                        "--device",
                        sim.site.device,
                        "--seed",
                        str(sim.run.seed),
                        "--insecure",
                        *(["--crash-at", str(kills[site.name])] if site.name in kills else []),
                        *(
                            ["--slowdown", repr(slowdowns[site.name])]
                            if site.name in slowdowns
                            else []
                        ),
                        *_dp_flags(sim, site),
                    ],
                    logs,
                    # Many agents share the machine's cores: one compute thread each avoids
                    # oversubscription (a user's explicit setting wins).
                    env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                )
            )
        # The local-only baselines train in this process while the federation runs (torch
        # releases the GIL; the server and agents are mostly waiting on each other).
        pending = None
        if sim.sim.baselines and isinstance(task, HasBaselines):
            sites = {s.name: resolve_data(s.data, config_dir) for s in sim.sites}
            pending = pool.submit(
                pooled.local_baselines, task, sites, sim.site.device, sim.run.seed
            )
        admin.wait_ready(60)
        # The pooled baseline is a baseline job of the server, like any operator's.
        job = pooled.submit(admin, baseline_spec) if baseline_spec is not None else None
        # The run starts once every site is connected, as an operator would submit it: else
        # its first round could start without a site still starting up (on a loaded machine,
        # longer than the round's wait_timeout_s) and the simulation would not be the one asked.
        _await_sites(admin, sim, children, console, started)
        admin.post("/api/v1/runs", sim.run.model_dump(mode="json", exclude_none=True))
        run = _follow(admin, sim, server, console, started)
        rounds = admin.get(f"/api/v1/runs/{run['id']}/rounds", limit=1000)
        privacy = admin.get(f"/api/v1/runs/{run['id']}/privacy")
        if job is not None:
            job = pooled.wait(admin, job, console, started + sim.sim.timeout_s)
        if pending is not None and not pending.done():
            console.print("finishing the local-only baselines…")
        baselines = pooled.section(job, pending.result() if pending is not None else None)
    finally:
        admin.close()
        processes.stop(children)
        pool.shutdown(cancel_futures=True)

    result = report.build(sim, run, rounds, baselines, privacy)
    report_path = report_path or out / "report.json"
    report.write(result, report_path)
    Console(width=max(console.width, 100)).print(report.table(result))  # results on stdout
    console.print(f"report: {report_path}  plot: {report_path.with_suffix('.png')}  logs: {logs}")
    if run["status"] != "completed":
        raise QuorumError(f"run {run['id']} ended {run['status']}: {run.get('error')}")
    return result


def _dp_flags(sim: SimFile, site: SimSite) -> list[str]:
    """The site's own DP budget, else the simulation's default one, as client-run flags."""
    budget = site.dp or sim.site.dp
    if budget is None:
        return []
    return [
        "--dp-epsilon",
        repr(budget.epsilon),
        "--dp-delta",
        repr(budget.delta),
        "--dp-max-grad-norm",
        repr(budget.max_grad_norm),
        "--dp-accountant",
        budget.accountant,
    ]


def _check(sim: SimFile, children: list[processes.Child], started: float, when: str) -> None:
    """Fails when one of `children` has exited or the simulation has run out of time. Checked
    before asking the admin API: a dead server would otherwise surface as a connection error."""
    for child in children:
        if not child.alive():
            raise QuorumError(f"{child.name} exited {when}:\n{child.log_tail()}")
    if time.monotonic() > started + sim.sim.timeout_s:
        raise QuorumError(f"simulation exceeded sim.timeout_s = {sim.sim.timeout_s:.0f} s")


def _await_sites(
    admin: AdminClient,
    sim: SimFile,
    children: list[processes.Child],
    console: Console,
    started: float,
) -> None:
    """Waits until every site of the simulation is connected; fails when a child exits first."""
    with console.status("waiting for the sites to connect…") as status:
        while True:
            _check(sim, children, started, "before the run started")
            connected = {s["name"] for s in admin.get("/api/v1/sites") if s["connected"]}
            if connected >= {site.name for site in sim.sites}:
                return
            status.update(
                f"waiting for the sites to connect ({len(connected)} of {len(sim.sites)})…"
            )
            time.sleep(0.2)


def _follow(
    admin: AdminClient, sim: SimFile, server: processes.Child, console: Console, started: float
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
        while True:
            _check(sim, [server], started, "before the run ended")  # sites may be killed on purpose
            runs = admin.get("/api/v1/runs")
            if runs:
                run: dict[str, Any] = runs[0]
                accuracy = _latest_accuracy(admin, run)
                status = run["status"] + (f" acc={accuracy:.3f}" if accuracy is not None else "")
                progress.update(bar, completed=run["rounds_completed"], status=status)
                if run["status"] in FINAL_STATES:
                    return run
            time.sleep(0.25)


def _latest_accuracy(admin: AdminClient, run: dict[str, Any]) -> float | None:
    if not run["rounds_completed"]:
        return None
    detail = admin.get(f"/api/v1/runs/{run['id']}/rounds/{run['rounds_completed']}")
    value = detail["metrics"].get("evaluate", {}).get("accuracy_mean_sites")
    return float(value) if value is not None else None
