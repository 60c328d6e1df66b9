"""The simulation report: JSON for machines, a table for the terminal, a PNG for people."""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict
from typing import Any

from rich.table import Table

from quorum.config import SimFile
from quorum.task import Baselines


def build(
    sim: SimFile, run: dict[str, Any], rounds: list[dict[str, Any]], baselines: Baselines | None
) -> dict[str, Any]:
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
                "wall_time_s": r["finished_at"] - started,
                "secagg": _secagg(r),
            }
        )
    last = rows[-1] if rows else {}
    return {
        "run_id": run["id"],
        "status": run["status"],
        "strategy": sim.run.strategy,
        "seed": sim.run.seed,
        "sites": [s.name for s in sim.sites],
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
        "baselines": asdict(baselines) if baselines else None,
        "wall_time_s": (run["finished_at"] or started) - started,
        "config": sim.model_dump(mode="json"),
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


def write(result: dict[str, Any], path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    plot(result, path.with_suffix(".png"))


def plot(result: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    rounds = [r["round"] for r in result["rounds"]]
    ax.plot(
        rounds,
        [r["accuracy_mean_sites"] for r in result["rounds"]],
        marker="o",
        label=f"federated ({result['strategy']}), mean of site test sets",
    )
    baselines = result.get("baselines")
    if baselines:
        ax.axhline(
            baselines["pooled"]["accuracy_mean_sites"],
            color="black",
            linestyle="--",
            label="pooled training",
        )
        local = baselines["local"]
        for i, (site, values) in enumerate(sorted(local.items())):
            ax.axhline(
                values["accuracy_mean_sites"],
                color=f"C{i + 1}",
                linestyle=":",
                label=f"local only: {site}",
            )
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (mean over site test sets)")
    ax.set_title(f"{result['run_id']} — seed {result['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(result: dict[str, Any]) -> Table:
    out = Table(title=f"{result['strategy']} · seed {result['seed']} · {result['status']}")
    out.add_column("round", justify="right")
    out.add_column("acc (mean of sites)", justify="right")
    out.add_column("acc (pooled test)", justify="right")
    out.add_column("loss", justify="right")
    out.add_column("wall time s", justify="right")
    secure = any(r["secagg"] for r in result["rounds"])
    if secure:
        out.add_column("secagg dropouts", overflow="fold")
    for r in result["rounds"]:
        dropouts = [f"{d['site']}@{d['stage']}" for d in (r["secagg"] or {}).get("dropped", [])]
        out.add_row(
            str(r["round"]),
            _f(r["accuracy_mean_sites"]),
            _f(r["accuracy_pooled_test"]),
            _f(r["loss"]),
            f"{r['wall_time_s']:.1f}",
            *([", ".join(dropouts) or "none"] if secure else []),
        )
    baselines = result.get("baselines")
    if baselines:
        pooled = baselines["pooled"]
        out.add_row(
            "pooled",
            _f(pooled.get("accuracy_mean_sites")),
            _f(pooled.get("accuracy_pooled_test")),
            "",
            "",
            style="bold",
        )
        for site, values in sorted(baselines["local"].items()):
            out.add_row(f"local {site}", _f(values.get("accuracy_mean_sites")), "", "", "")
    return out


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
