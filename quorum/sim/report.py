"""The simulation report: JSON for machines, a table for the terminal, a PNG for people."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from rich.table import Table

from quorum.config import SimFile
from quorum.sim.plan import SitePlan

KNOWN_EVALUATE = {"accuracy", "loss", "num_sites", "accuracy_mean_sites", "loss_mean_sites"}
MAX_STACKED = 20
"""Labels drawn as stacked bars in the partition plot; more are drawn as a heatmap."""
TABLE_ROWS = 20
"""About this many rounds in the printed table of a long run (every k-th; the report has all)."""


def build(
    sim: SimFile,
    run: dict[str, Any],
    rounds: list[dict[str, Any]],
    baselines: dict[str, Any] | None,
    privacy: dict[str, Any],
    plan: SitePlan,
    hosts: list[dict[str, Any]],
    server_peak_rss_mb: float | None,
) -> dict[str, Any]:
    """`privacy` is the run's privacy ledger from the admin API (`/runs/{id}/privacy`);
    `baselines` the pooled job's results and the local-only ones (`quorum.sim.pooled.section`);
    `hosts` what each site host reported at its end (with its peak memory), beside the
    server's peak memory."""
    started = run["started_at"] or run["created_at"]
    completed = [r for r in rounds if r["status"] == "completed"]
    rows = []
    for r in completed:
        evaluate = r["metrics"].get("evaluate", {})
        rows.append(
            {
                "round": r["round"],
                "accuracy_mean_sites": evaluate.get("accuracy_mean_sites"),
                "accuracy_pooled_test": evaluate.get("accuracy"),
                "loss": evaluate.get("loss"),
                "fit_loss": r["metrics"].get("fit", {}).get("loss"),
                "num_sites": r["metrics"].get("fit", {}).get("num_sites"),
                # Site-level DP: ε spent so far, averaged over the sites that trained.
                "dp_epsilon": r["metrics"].get("fit", {}).get("dp_epsilon"),
                # Central DP: the run's user-level ε after this round.
                "central_epsilon": r["metrics"].get("central_dp", {}).get("epsilon"),
                "wall_time_s": r["finished_at"] - started,
                # The sites' uploads: bytes on the wire, and what they were uncompressed.
                "upload_bytes": r.get("bytes_in"),
                "upload_bytes_uncompressed": r.get("bytes_in_uncompressed"),
                # Async: how many versions old the oldest update of this server step was.
                "staleness_max": r["metrics"].get("fit", {}).get("staleness_max"),
                "secagg": _secagg(r),
                "gossip": _gossip(r),
                # Every metric the task reported, as the round recorded it.
                "evaluate": evaluate,
                "fit": r["metrics"].get("fit", {}),
            }
        )
    last = rows[-1] if rows else {}
    return {
        "run_id": run["id"],
        "status": run["status"],
        "mode": sim.run.mode,
        "strategy": sim.run.strategy,
        "seed": sim.run.seed,
        "sites": [s.name for s in plan.sites],
        # Hostile sites (`[sim] byzantine`): site -> ATTACK[:PARAM], as they ran.
        "byzantine": {s.name: str(s.attack) for s in plan.sites if s.attack is not None},
        "partition": _partition(sim, plan),
        "hosts": hosts,
        "server_peak_rss_mb": server_peak_rss_mb,
        "rounds": rows,
        "aborted_rounds": [
            {
                "round": r["round"],
                "attempt": r["attempt"],
                "reason": r["abort_reason"],
                "secagg": _secagg(r),
            }
            for r in rounds
            if r["status"] == "aborted"
        ],
        "final": {
            "round": last.get("round"),
            "accuracy_mean_sites": last.get("accuracy_mean_sites"),
            "accuracy_pooled_test": last.get("accuracy_pooled_test"),
            "loss": last.get("loss"),
        },
        "baselines": baselines,
        "privacy": _privacy(privacy),
        "wall_time_s": (run["finished_at"] or started) - started,
        "config": sim.model_dump(mode="json"),
    }


def _partition(sim: SimFile, plan: SitePlan) -> dict[str, Any] | None:
    """The partition's kind, each site's size and label histogram (and owner, when natural)."""
    if plan.parts is None or plan.labels is None or sim.sim.partition is None:
        return None
    from quorum.sim import partition

    classes, counts = partition.histogram(plan.labels, plan.parts)
    by_part = {s.part: s for s in plan.sites if s.part is not None}
    return {
        **sim.sim.partition.model_dump(),
        "data": sim.sim.data,
        "classes": classes,
        "sites": [
            {
                "site": by_part[i].name if i in by_part else None,
                "owner": by_part[i].owner if i in by_part else None,
                "size": len(part),
                "labels": [int(c) for c in counts[i]],
            }
            for i, part in enumerate(plan.parts)
        ],
    }


def _privacy(ledger: dict[str, Any]) -> dict[str, Any] | None:
    """ε per round: each DP site's (its latest report per round) and the run's central ε; None
    for a run without DP."""
    sites = {}
    for site in ledger["sites"]:
        if not site["dp"]:
            continue
        per_round: dict[int, float] = {}
        for r in site["rounds"]:
            if r["epsilon"] is not None:
                per_round[r["round"]] = r["epsilon"]
        sites[site["site"]] = {
            "budget": site["budget"],
            "delta": site["delta"],
            "exhausted": site["exhausted"],
            "epsilon": [{"round": k, "epsilon": v} for k, v in sorted(per_round.items())],
        }
    central = ledger["central"]
    if not sites and central is None:
        return None
    return {
        "sites": sites,
        "central": None
        if central is None
        else {
            "mode": central["mode"],
            "delta": central["delta"],
            "noise_multiplier": central["noise_multiplier"],
            "epsilon": [{"round": r["round"], "epsilon": r["epsilon"]} for r in central["rounds"]],
        },
    }


def _secagg(round_record: dict[str, Any]) -> dict[str, Any] | None:
    """Who the secure aggregation lost at which stage, and whether the sum was recovered."""
    record = round_record.get("secagg")
    if record is None:
        return None
    return {
        "recovered": record["recovered"],
        "survivors": record["survivors"],
        "dropped": [
            {"site": d["site"], "stage": s["stage"], "reason": d["reason"]}
            for s in record["stages"]
            for d in s["dropped"]
        ],
        "stage_seconds": {s["stage"]: round(s["duration_s"], 4) for s in record["stages"]},
    }


def _gossip(round_record: dict[str, Any]) -> dict[str, Any] | None:
    """A gossip round's consensus distance (mean L2 distance between neighbours' trained
    models), its skipped pairs, and each site's accuracy after mixing; None for other modes."""
    record = round_record["metrics"].get("gossip")
    if record is None:
        return None
    return {
        "consensus_distance": record.get("consensus_distance"),
        "consensus_distance_cycle": record.get("consensus_distance_cycle"),
        "max_distance": record.get("max_distance"),
        "mixed_pairs": record.get("mixed_pairs"),
        "skipped_pairs": record.get("skipped_pairs"),
        "site_accuracy": round_record["metrics"].get("site_accuracy", {}),
    }


def _gossip_sites(result: dict[str, Any]) -> list[str]:
    return sorted(
        {s for r in result["rounds"] for s in (r.get("gossip") or {}).get("site_accuracy", {})}
    )


def _gossip_cells(row: dict[str, Any], sites: list[str]) -> list[str]:
    gossip = row.get("gossip") or {}
    accuracy = gossip.get("site_accuracy", {})
    return [_f(gossip.get("consensus_distance")), *(_f(accuracy.get(s)) for s in sites)]


def _plot_consensus(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Gossip: the mean L2 distance between neighbours' trained models, per round."""
    ax.plot(
        [r["round"] for r in rows],
        [r["gossip"]["consensus_distance"] for r in rows],
        marker="o",
        color="C3",
        label="consensus distance (mean over neighbour pairs)",
    )
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("L2 distance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def write(result: dict[str, Any], path: pathlib.Path) -> None:
    """The JSON report, its plot beside it (PATH.png) and, for a partitioned simulation, the
    sites' label histograms (PATH-partition.png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    plot(result, path.with_suffix(".png"))
    if result.get("partition"):
        plot_partition(result["partition"], path.with_name(f"{path.stem}-partition.png"))


def plot_partition(section: dict[str, Any], path: pathlib.Path) -> None:
    """Each site's examples per label: stacked bars for up to MAX_STACKED labels; past that (a
    natural partition by speaker has hundreds) the sites' sizes above a heatmap of their label
    shares, which draws in the same time whatever the number of labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.array([s["labels"] for s in section["sites"]], dtype=np.int64)
    sites = np.arange(len(counts))
    width = min(14, 6 + len(counts) / 25)
    detail = {
        "dirichlet": f"alpha {section['alpha']:g}",
        "shards": f"{section['shards_per_site']} shards per site",
        "quantity": f"power {section['power']:g}",
    }.get(section["kind"], "")
    title = f"{section['data']}: {section['kind']} partition{' ' + detail if detail else ''}"
    title += f" over {len(counts)} sites"
    if counts.shape[1] <= MAX_STACKED:
        fig, ax = plt.subplots(figsize=(width, 4.2), dpi=120)
        bottom = np.zeros(len(counts))
        cmap = plt.get_cmap("tab20" if counts.shape[1] > 10 else "tab10")
        for j, name in enumerate(section["classes"]):
            ax.bar(
                sites,
                counts[:, j],
                bottom=bottom,
                width=1.0,
                color=cmap(j),
                label=str(name),
                linewidth=0,
            )
            bottom += counts[:, j]
        ax.set_ylabel("examples per label")
        ax.legend(fontsize=6, ncol=2, loc="upper right", title="label", title_fontsize=7)
    else:
        fig, (sizes, ax) = plt.subplots(
            2, 1, figsize=(width, 6), dpi=120, sharex=True, height_ratios=[1, 3]
        )
        sizes.bar(sites, counts.sum(axis=1), width=1.0, linewidth=0, color="C0")
        sizes.set_ylabel("examples")
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(
            share.T,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            cmap="viridis",
            extent=(-0.5, len(counts) - 0.5, -0.5, counts.shape[1] - 0.5),
        )
        fig.colorbar(image, ax=ax, label="share of the site's examples", pad=0.01)
        ax.set_ylabel(f"label (of {counts.shape[1]})")
        sizes.set_title(title)
    ax.set_xlabel("site")
    ax.set_xlim(-0.5, len(counts) - 0.5)
    if counts.shape[1] <= MAX_STACKED:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def tensorboard(result: dict[str, Any], directory: pathlib.Path) -> None:
    """The rounds' scalars (every evaluate and fit metric, ε, wall time) as TensorBoard event
    files under DIRECTORY/RUN_ID."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from quorum.errors import ConfigError

        raise ConfigError(
            "sim.tensorboard needs the tensorboard package: pip install 'quorum-fl[tensorboard]'"
        ) from None
    writer = SummaryWriter(log_dir=str(directory / result["run_id"]))
    try:
        for row in result["rounds"]:
            step = row["round"]
            for phase in ("evaluate", "fit"):
                for name, value in row[phase].items():
                    writer.add_scalar(f"{phase}/{name}", value, step)
            for name in ("central_epsilon", "wall_time_s"):
                if row.get(name) is not None:
                    writer.add_scalar(name, row[name], step)
    finally:
        writer.close()


def plot(result: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    privacy = result.get("privacy")
    consensus = [r for r in result["rounds"] if (r.get("gossip") or {}).get("consensus_distance")]
    lower = int(bool(privacy)) + int(bool(consensus))
    if lower:
        fig, axes = plt.subplots(
            1 + lower,
            1,
            figsize=(7, 4.2 + 2.2 * lower),
            dpi=120,
            sharex=True,
            height_ratios=[3] + [2] * lower,
        )
        ax, panels = axes[0], list(axes[1:])
        if privacy:
            _plot_privacy(panels.pop(0), privacy)
        if consensus:
            _plot_consensus(panels.pop(0), consensus)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    rounds = [r["round"] for r in result["rounds"]]
    ax.plot(
        rounds,
        [r["accuracy_mean_sites"] for r in result["rounds"]],
        marker="o",
        label=f"federated ({result['strategy']}), mean of site test sets",
    )
    for i, name in enumerate(extra_metrics(result)):
        ax.plot(
            rounds,
            [r["evaluate"].get(name) for r in result["rounds"]],
            marker=".",
            linestyle="-.",
            color=f"C{6 + i % 4}",
            label=f"federated {name}",
        )
    baselines = result.get("baselines")
    if baselines:
        pooled = _pooled_accuracy(baselines)
        if pooled is not None:
            ax.axhline(pooled, color="black", linestyle="--", label=_pooled_label(baselines))
        local = baselines["local"]
        for i, (site, values) in enumerate(sorted(local.items())):
            ax.axhline(
                values["accuracy_mean_sites"],
                color=f"C{i + 1}",
                linestyle=":",
                label=f"local only: {site}",
            )
    if not lower:
        ax.set_xlabel("round")
    ax.set_ylabel("accuracy (mean over site test sets)")
    ax.set_title(f"{result['run_id']} — seed {result['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_privacy(ax: Any, privacy: dict[str, Any]) -> None:
    """ε spent per round: each site's against its budget, and the run's central ε."""
    for i, (site, values) in enumerate(sorted(privacy["sites"].items())):
        points = values["epsilon"]
        ax.plot(
            [p["round"] for p in points],
            [p["epsilon"] for p in points],
            marker=".",
            color=f"C{i + 1}",
            label=f"{site} (budget {values['budget']:g})",
        )
    budgets = {values["budget"] for values in privacy["sites"].values()}
    for budget in budgets:
        ax.axhline(budget, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("site ε spent" if privacy["sites"] else "")
    ax.grid(alpha=0.3)
    central = privacy["central"]
    if central:
        # A user-level ε is on another scale than the sites' example-level ones: its own axis.
        central_ax = ax.twinx() if privacy["sites"] else ax
        central_ax.plot(
            [p["round"] for p in central["epsilon"]],
            [p["epsilon"] for p in central["epsilon"]],
            marker="s",
            color="black",
            label=f"central ε ({central['mode']}, z={central['noise_multiplier']:g})",
        )
        central_ax.set_ylabel("central (user-level) ε spent")
        if central_ax is not ax:
            central_ax.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="upper left")


def extra_metrics(result: dict[str, Any]) -> list[str]:
    """Evaluate metrics the task reports besides accuracy and loss (e.g. macro_f1)."""
    names = {k for r in result["rounds"] for k in r["evaluate"]}
    return sorted(n for n in names - KNOWN_EVALUATE if not n.endswith("_mean_sites"))


def table(result: dict[str, Any], every: int | None = None) -> Table:
    """Every round of a short run; of a long one every k-th (about TABLE_ROWS rows, and the
    last), with the full list in the report."""
    out = Table(title=f"{result['strategy']} · seed {result['seed']} · {result['status']}")
    rounds = result["rounds"]
    every = every or max(1, -(-len(rounds) // TABLE_ROWS))
    shown = [r for i, r in enumerate(rounds) if i % every == every - 1 or i == len(rounds) - 1]
    if every > 1:
        out.caption = f"one round in {every}; all {len(rounds)} in the report"
    extra = extra_metrics(result)
    out.add_column("round", justify="right")
    out.add_column("acc (mean of sites)", justify="right")
    out.add_column("acc (pooled test)", justify="right")
    out.add_column("loss", justify="right")
    out.add_column("wall time s", justify="right")
    for name in extra:
        out.add_column(name, justify="right")
    secure = any(r["secagg"] for r in result["rounds"])
    if secure:
        out.add_column("secagg dropouts", overflow="fold")
    site_dp = any(r.get("dp_epsilon") is not None for r in result["rounds"])
    if site_dp:
        out.add_column("ε sites (mean)", justify="right")
    central = any(r.get("central_epsilon") is not None for r in result["rounds"])
    if central:
        out.add_column("ε central", justify="right")
    gossip_sites = _gossip_sites(result)
    if gossip_sites:
        out.add_column("consensus", justify="right", min_width=9)
        for site in gossip_sites:
            out.add_column(site[:8], justify="right")
        out.caption = "gossip: consensus = mean L2 distance between neighbours; per-site accuracy"
    for r in shown:
        dropouts = [f"{d['site']}@{d['stage']}" for d in (r["secagg"] or {}).get("dropped", [])]
        out.add_row(
            str(r["round"]),
            _f(r["accuracy_mean_sites"]),
            _f(r["accuracy_pooled_test"]),
            _f(r["loss"]),
            f"{r['wall_time_s']:.1f}",
            *(_f(r["evaluate"].get(name)) for name in extra),
            *([", ".join(dropouts) or "none"] if secure else []),
            *([_f(r.get("dp_epsilon"))] if site_dp else []),
            *([_f(r.get("central_epsilon"))] if central else []),
            *(_gossip_cells(r, gossip_sites) if gossip_sites else []),
        )
    baselines = result.get("baselines")
    if baselines:
        pooled = baselines["pooled"] or {}
        job = baselines.get("pooled_job") or {}
        out.add_row(
            "pooled" if not job or job["status"] == "completed" else f"pooled ({job['status']})",
            _f(_pooled_accuracy(baselines)),
            _f(pooled.get("accuracy_pooled_test")),
            _f(pooled.get("eval_loss")),
            _f(pooled.get("wall_s")),
            *(_f(pooled.get(name)) for name in extra),
            style="bold",
        )
        for site, values in sorted(baselines["local"].items()):
            out.add_row(f"local {site}", _f(values.get("accuracy_mean_sites")), "", "", "")
    return out


def _pooled_accuracy(baselines: dict[str, Any]) -> float | None:
    """The pooled job's accuracy on the sites' test sets where the task reports it per site,
    else its accuracy (on the task's pooled test set)."""
    pooled = baselines["pooled"] or {}
    value = pooled.get("accuracy_mean_sites", pooled.get("eval_accuracy"))
    return None if value is None else float(value)


def _pooled_label(baselines: dict[str, Any]) -> str:
    job = baselines.get("pooled_job")
    if not job:
        return "pooled training"
    return f"pooled training ({job['engine']}, {job['nproc']} rank(s), {job['id']})"


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
