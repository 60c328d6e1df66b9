"""The `quorum` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
from typing import Annotated, get_args

import click
import typer
from rich.console import Console
from rich.markup import escape

from quorum import heap, logs
from quorum.baseline.cli import baseline_app
from quorum.certs_cli import certs_app
from quorum.config import SiteDPConfig
from quorum.errors import QuorumError
from quorum.operator.render import when
from quorum.operator.runs import rounds, runs_app
from quorum.operator.sites import sites_app
from quorum.operator.tokens import tokens_app

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    help="Quorum: federated learning for hospitals and edge sites.",
)
site_app = typer.Typer(
    no_args_is_help=True,
    help="Site identities, and registration in a state directory (before the server starts; "
    "`quorum sites ...` registers over the admin API).",
)
server_app = typer.Typer(no_args_is_help=True, help="The aggregation server.")
client_app = typer.Typer(no_args_is_help=True, help="The site agent.")
app.add_typer(site_app, name="site")
app.add_typer(server_app, name="server")
app.add_typer(client_app, name="client")
app.add_typer(baseline_app, name="baseline")
app.add_typer(certs_app, name="certs")
state_app = typer.Typer(no_args_is_help=True, help="The server's state directory.")
app.add_typer(state_app, name="state")
app.add_typer(runs_app, name="runs")
app.command("rounds")(rounds)
app.add_typer(sites_app, name="sites")
app.add_typer(tokens_app, name="tokens")
# soft_wrap: a message is one line however long (logs and scripts read it whole).
console = Console(stderr=True, soft_wrap=True)


def _print_version(wanted: bool) -> None:
    if wanted:
        from quorum import __version__

        print(f"quorum {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Quorum: federated learning for hospitals and edge sites."""


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: section.key=value (repeatable)."),
]
LogFormat = Annotated[
    str,
    typer.Option("--log-format", click_type=click.Choice(logs.FORMATS), help="text or json"),
]


@site_app.command("keygen")
def site_keygen(
    out: Annotated[
        pathlib.Path, typer.Option("--out", help="Private key file; NAME.pub is written beside it.")
    ],
    force: Annotated[bool, typer.Option(help="Overwrite an existing key.")] = False,
) -> None:
    """Write a new Ed25519 site key pair.

    Example: quorum site keygen --out keys/cleveland.key
    """
    from quorum import identity

    if out.exists() and not force:
        raise QuorumError(f"{out} exists; pass --force to overwrite it")
    public = identity.write_keypair(identity.generate(), out)
    console.print(
        f"wrote {out} (private, keep it at the site) and {public} (give it to the operator)"
    )


@site_app.command("add")
def site_add(
    state_dir: Annotated[pathlib.Path, typer.Option("--state-dir")],
    name: Annotated[str, typer.Option("--name")],
    public_key: Annotated[pathlib.Path, typer.Option("--public-key")],
    init: Annotated[
        bool,
        typer.Option(
            "--init", help="Create the state store if the directory holds none (before a server)"
        ),
    ] = False,
) -> None:
    """Register a site's public key in the server's state store.

    Example: quorum site add --state-dir quorum-state --name cleveland --public-key cleveland.pub
    """
    from quorum.identity import load_public
    from quorum.server.store import Store

    db = state_dir / "quorum.db"
    if not init and not db.exists():
        # A mistyped directory would otherwise get a new, empty store that no server reads.
        raise QuorumError(
            f"{state_dir} holds no state store (quorum.db): give the server's state_dir, or "
            "pass --init to create one there"
        )
    store = Store(db)
    try:
        store.add_site(name, load_public(public_key))
    finally:
        store.close()
    console.print(f"registered site {name!r}")


@site_app.command("list")
def site_list(state_dir: Annotated[pathlib.Path, typer.Option("--state-dir")]) -> None:
    """List registered sites.

    Example: quorum site list --state-dir quorum-state
    """
    from rich.table import Table

    from quorum.server.store import Store

    store = Store(state_dir / "quorum.db")
    table = Table("name", "registered", "status")
    for site in store.sites():
        table.add_row(site.name, when(site.registered_at), "active" if site.active else "revoked")
    store.close()
    Console().print(table)


@state_app.command("check")
def state_check(
    state_dir: Annotated[pathlib.Path, typer.Option("--state-dir", help="The server's state_dir")],
) -> None:
    """Check a state directory: the store's integrity (SQLite quick_check), that it knows every
    run with checkpoints, and each kept checkpoint's model against its recorded digest.

    Example: quorum state check --state-dir quorum-state
    """
    from quorum.server.checkpoints import Checkpoints
    from quorum.server.integrity import damaged_checkpoints, lost_runs, runs_behind
    from quorum.server.store import Store

    db = state_dir / "quorum.db"
    if not db.exists():
        raise QuorumError(f"{db} does not exist")
    store = Store(db)
    try:
        problems = [p for p in [store.quick_check()] if p is not None]
        problems += [
            f"the store does not know run {run}, whose checkpoints are kept"
            for run in lost_runs(store, state_dir / "checkpoints")
        ]
        problems += [what for _, what in runs_behind(store, Checkpoints(state_dir / "checkpoints"))]
        verified, damaged = damaged_checkpoints(store, state_dir / "checkpoints")
        problems += damaged
    finally:
        store.close()
    for problem in problems:
        console.print(f"[red]problem:[/red] {escape(problem)}")
    if problems:
        raise QuorumError(
            f"{len(problems)} problem(s) in {state_dir}: restore quorum.db or the named "
            "checkpoints from a backup"
        )
    console.print(f"{state_dir}: the store is sound, {verified} kept checkpoint(s) verified")


@state_app.command("backup")
def state_backup(
    state_dir: Annotated[pathlib.Path, typer.Option("--state-dir", help="The server's state_dir")],
    out: Annotated[pathlib.Path, typer.Option("--out", help="Where to write the copy")],
) -> None:
    """Copy the state store, also while the server runs (SQLite's online backup).

    Example: quorum state backup --state-dir quorum-state --out quorum-backup.db
    """
    from quorum.server.store import Store

    db = state_dir / "quorum.db"
    if not db.exists():
        raise QuorumError(f"{db} does not exist")
    store = Store(db)
    try:
        store.backup(out)
    finally:
        store.close()
    console.print(
        f"wrote {out} (to restore: stop the server, put it in place as quorum.db and delete "
        "quorum.db-wal and quorum.db-shm beside it)"
    )


@server_app.command("start")
def server_start(
    config: Annotated[pathlib.Path, typer.Option("--config", help="server.toml")],
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC and HTTP (loopback only).")
    ] = False,
    set_: SetOption = None,
    log_format: LogFormat = "text",
    init: Annotated[
        bool,
        typer.Option(
            "--init",
            help="Start afresh even though the state store is damaged or does not know runs "
            "whose checkpoints are in the state directory (both are moved aside)",
        ),
    ] = False,
) -> None:
    """Start the federation service and the admin API.

    Example: quorum server start --config examples/heart_disease/server.toml --insecure
    """
    from quorum.config import ServerFile, load
    from quorum.server_process import serve

    logs.setup(log_format)
    server_file = load(ServerFile, config, set_ or [])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(server_file, insecure=insecure, fresh_start=init))


@client_app.command("run")
def client_run(
    config: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--config",
            help="A site config (TOML): these settings in its tables client and dp",
        ),
    ] = None,
    set_: SetOption = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", help="HOST:PORT of the federation service (required, here or in --config)"
        ),
    ] = None,
    site_key: Annotated[
        pathlib.Path | None,
        typer.Option("--site-key", help="This site's private key (required, here or in --config)"),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", help="module:attribute of the FederatedTask (required, here or in --config)"
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="This site's data, passed to the task (required, here or in --config)"
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC (loopback only).")
    ] = False,
    root_cert: Annotated[
        pathlib.Path | None,
        typer.Option("--root-cert", help="CA bundle for the server's TLS certificate"),
    ] = None,
    cache_dir: Annotated[
        pathlib.Path | None, typer.Option("--cache-dir", help="Keep downloaded models here")
    ] = None,
    give_up_after: Annotated[
        float | None,
        typer.Option(
            "--give-up-after",
            help="Exit with an error after this many seconds without a session (for scripts; "
            "default: keep trying)",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="(default: 0)")] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(
            "--dp-epsilon",
            help="Train with DP-SGD under this site's own budget ε for each run (Opacus)",
        ),
    ] = None,
    dp_delta: Annotated[
        float | None, typer.Option("--dp-delta", help="δ of the site's budget (default: 1e-5)")
    ] = None,
    dp_max_grad_norm: Annotated[
        float | None,
        typer.Option(
            "--dp-max-grad-norm", help="per-example gradient clipping norm (default: 1.0)"
        ),
    ] = None,
    dp_accountant: Annotated[
        str | None,
        typer.Option(
            "--dp-accountant",
            click_type=click.Choice(get_args(SiteDPConfig.model_fields["accountant"].annotation)),
            help="rdp or prv (Opacus accountants; default: rdp)",
        ),
    ] = None,
    dp_ledger: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--dp-ledger",
            help="The site's privacy ledger (default: beside the site key, KEY.privacy.json)",
        ),
    ] = None,
    crash_at: Annotated[
        str | None,
        typer.Option(
            "--crash-at",
            help="Fault injection: SIGKILL this agent at ROUND:STAGE (fit, advertise-keys, "
            "share-keys, masked-input, unmask)",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            click_type=click.Choice(logs.FORMATS),
            help="text or json (default: text)",
        ),
    ] = None,
    slowdown: Annotated[
        float | None,
        typer.Option(
            "--slowdown",
            help="Simulate a slower machine: every fit takes this many times as long (>= 1)",
        ),
    ] = None,
    flower_app: Annotated[
        str | None,
        typer.Option(
            "--flower-app",
            help="module:attribute of a Flower ClientApp (or client_fn) that trains and "
            "evaluates in place of the task's site; --data is its node config "
            "('partition-id=0 num-partitions=2')",
        ),
    ] = None,
) -> None:
    """Join a federation and serve its tasks until interrupted.

    Every setting is a flag, or a key of a site config file (--config) that flags override.

    Example: quorum client run --config examples/heart_disease/site.toml
    --site-key keys/cleveland.key --data cleveland
    """
    import grpc

    from quorum.client.agent import SiteAgent
    from quorum.client.compression import Residuals
    from quorum.client.faults import Crash, kill_hook
    from quorum.client.gossip_models import GossipModels
    from quorum.client.transfer import BlobCache
    from quorum.config import load_site
    from quorum.identity import load_private
    from quorum.task import SiteTask, load_task

    # A flag left out is None, so the file (or the default) decides; --insecure can only be
    # turned on here (a file says `insecure = false` by leaving it out).
    site = load_site(
        config,
        set_ or [],
        {
            "client.server": server,
            "client.site_key": site_key,
            "client.task": task,
            "client.data": data,
            "client.device": device,
            "client.insecure": insecure or None,
            "client.root_cert": root_cert,
            "client.cache_dir": cache_dir,
            "client.give_up_after_s": give_up_after,
            "client.seed": seed,
            "client.log_format": log_format,
            "client.flower_app": flower_app,
            "dp.epsilon": dp_epsilon,
            "dp.delta": dp_delta,
            "dp.max_grad_norm": dp_max_grad_norm,
            "dp.accountant": dp_accountant,
            "dp.ledger": dp_ledger,
        },
    )
    client = site.client
    logs.setup(client.log_format)
    hook = kill_hook(Crash.parse(crash_at)) if crash_at else None
    key = load_private(client.site_key)
    site_task: SiteTask
    if client.flower_app is not None:
        from quorum.client.flower import FlowerSite, load_flower_app

        initial = load_task(client.task).initial_parameters(client.seed)
        site_task = FlowerSite(load_flower_app(client.flower_app), initial, client.data)
    else:
        site_task = load_task(client.task).site(client.data, client.device, client.seed)
    if site.dp is not None:
        from quorum.client.privacy import enable_site_dp

        enable_site_dp(site_task, site.dp, site.ledger_path)
    if slowdown is not None:
        from quorum.client.faults import Slowed

        site_task = Slowed(site_task, slowdown)
    credentials = None
    if not client.insecure:
        cert = client.root_cert.read_bytes() if client.root_cert else None
        credentials = grpc.ssl_channel_credentials(cert)
    agent = SiteAgent(
        client.server,
        key,
        client.task,
        site_task,
        credentials=credentials,
        cache=BlobCache(client.cache_dir, spare=True),
        on_stage=hook,
        # A gossip run's own model of this site: kept across restarts, beside the cache or key.
        gossip_models=GossipModels(
            client.cache_dir / "gossip"
            if client.cache_dir
            else client.site_key.with_suffix(".gossip")
        ),
        give_up_after_s=client.give_up_after_s,
        # A compressed run's error feedback: kept across restarts, beside the gossip models.
        residuals=Residuals(
            client.cache_dir / "residuals"
            if client.cache_dir
            else client.site_key.with_suffix(".residuals")
        ),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)
        if agent.slots.busy:
            # A task's thread (a fit) cannot be stopped, and waiting for it could hold the exit
            # for the whole fit: its update was never sent, and nothing it writes is left half
            # written (files are replaced whole).
            logging.getLogger("quorum.client").warning(
                "event=stopped_mid_task detail=the task in progress is abandoned"
            )
            logging.shutdown()
            os._exit(0)

    asyncio.run(main())


@app.command("sim")
def sim(
    config: Annotated[pathlib.Path, typer.Option("--config", help="sim.toml")],
    report: Annotated[
        pathlib.Path | None,
        typer.Option("--report", help="JSON report path (a PNG plot is written beside it)"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Model initialisation and sampling seed")
    ] = None,
    set_: SetOption = None,
    kill_site: Annotated[
        list[str] | None,
        typer.Option(
            "--kill-site",
            help="SITE@ROUND:STAGE: that site vanishes (no answer, no goodbye) as it begins the "
            "stage (fit, advertise-keys, share-keys, masked-input, unmask, gossip-keys, "
            "gossip-send, gossip-mix) of that round; repeatable",
        ),
    ] = None,
    slow_site: Annotated[
        list[str] | None,
        typer.Option(
            "--slow-site",
            help="SITE=FACTOR: that site trains FACTOR times slower (heterogeneous speeds); "
            "repeatable",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Run the site hosts as actors of this Ray cluster (HOST:PORT; sets "
            "sim.backend = ray)",
        ),
    ] = None,
    byzantine: Annotated[
        list[str] | None,
        typer.Option(
            "--byzantine",
            help="SITE_OR_FRACTION=ATTACK[:PARAM]: hostile sites (0.2=signflip, "
            "site-0007=scale:10); attacks signflip, scale, noise, labelflip, alie; adds to "
            "sim.byzantine; repeatable",
        ),
    ] = None,
) -> None:
    """Run a whole federation on this machine (or a Ray cluster) and report on it.

    Example: quorum sim --config examples/mnist/sim.toml --set sim.num_sites=1000
    """
    from quorum.client.faults import parse_kill, parse_slowdown
    from quorum.config import SimFile, load
    from quorum.sim.runner import run_simulation

    sim_file = load(SimFile, config, set_ or [])
    if seed is not None:
        sim_file.run.seed = seed
    if ray_address is not None:
        sim_file.sim.backend = "ray"
        sim_file.sim.ray_address = ray_address
    sim_file.sim.byzantine = [*sim_file.sim.byzantine, *(byzantine or [])]
    kills = dict(parse_kill(k) for k in kill_site or [])
    slowdowns = dict(parse_slowdown(s) for s in slow_site or [])
    run_simulation(
        sim_file,
        config_dir=config.parent,
        report_path=report,
        console=console,
        kills=kills,
        slowdowns=slowdowns,
    )


@app.command("sim-host", hidden=True)
def sim_host(
    spec: Annotated[pathlib.Path, typer.Option("--spec", help="The host's spec (JSON)")],
    summary: Annotated[
        pathlib.Path | None, typer.Option("--summary", help="Write what the host did here")
    ] = None,
    log_format: LogFormat = "text",
) -> None:
    """One site host of `quorum sim` (which starts it): many virtual sites in one process."""
    import json

    from quorum.sim.host import read_spec, serve

    logs.setup(log_format)
    host_spec = read_spec(spec)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        done = await serve(host_spec, stop)
        if summary is not None:
            summary.write_text(json.dumps(done))

    asyncio.run(main())


def main() -> None:
    # gRPC's C core prints each failed TLS handshake as OpenSSL text; the agent says it once,
    # with the flag to change (quorum.client.reachability).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # Freed model-sized work (blocks of uploads, downloads, masks) goes back to the kernel, and
    # fresh model-sized arrays do not stall in the kernel's huge-page compaction.
    heap.return_large_blocks()
    heap.no_huge_pages()
    try:
        app(standalone_mode=False, prog_name="quorum")
    except QuorumError as exc:
        from rich.markup import escape

        # Messages quote TOML tables ("[client]"), which rich would take for markup and drop.
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        raise SystemExit(130) from None
    except Exception as exc:  # click's usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
