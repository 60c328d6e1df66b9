"""Async (FedBuff) against sync FedYogi on the heart-disease federation with one slow site.

Runs `quorum sim` on examples/heart_disease/sim.toml for each seed, twice, with
`--slow-site cleveland=5` (that hospital trains five times slower): as the example is (sync
FedYogi, 15 rounds) and as an async run (FedBuff, buffer of 2, 60 server steps, staleness
exponent 0.5, server learning rate 0.5 with momentum 0.5). Time is counted from the first fit
offer of the run (so that agent start-up, the same for both, is left out) to the end of the
round whose model first reached the target mean site accuracy. Prints the table, writes JSON
and one PNG with every curve (mean site accuracy against wall time).

    python bench/async_vs_sync.py --seeds 42 43 44 45 46 --json bench/results/async_vs_sync.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.common import write_json
from quorum.server.store import Store

REPO = pathlib.Path(__file__).resolve().parents[1]
SIM = "examples/heart_disease/sim.toml"
MODES: dict[str, list[str]] = {
    "sync-fedyogi": [],
    "async-fedbuff": [
        "--set",
        "run.mode=async",
        "--set",
        "run.strategy=fedavg",
        "--set",
        "run.server_learning_rate=0.5",
        "--set",
        "run.server_momentum=0.5",
        "--set",
        "run.buffer_size=2",
        "--set",
        "run.rounds=60",
        "--set",
        "run.staleness_exponent=0.5",
    ],
}


def run_sim(mode: str, seed: int, slow: str, out: pathlib.Path) -> dict[str, Any]:
    report = out / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quorum",
            "sim",
            "--config",
            SIM,
            "--report",
            str(report),
            "--seed",
            str(seed),
            "--set",
            f"sim.output_dir={out}",
            "--set",
            "sim.baselines=false",
            "--slow-site",
            slow,
            *MODES[mode],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} seed {seed} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(report.read_text())
    store = Store(out / "work" / "state" / "quorum.db")
    try:
        run = store.run(result["run_id"])
        detail = store.round_detail(result["run_id"], 1)
        # The first offers of either mode are for round 1 (async updates move to the round
        # they were applied in, and the first K stay in round 1).
        training_started = min(p.offered_at for p in detail.participants if p.kind == "fit")
        started = run.started_at or training_started
    finally:
        store.close()
    curve = [
        {
            "round": r["round"],
            "t_s": r["wall_time_s"] - (training_started - started),
            "accuracy_mean_sites": r["accuracy_mean_sites"],
        }
        for r in result["rounds"]
    ]
    return {"mode": mode, "seed": seed, "curve": curve, "final": result["final"]}


def time_to(curve: list[dict[str, Any]], target: float) -> float | None:
    for point in curve:
        if point["accuracy_mean_sites"] is not None and point["accuracy_mean_sites"] >= target:
            return float(point["t_s"])
    return None


def plot(results: list[dict[str, Any]], target: float, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colours = {"sync-fedyogi": "tab:blue", "async-fedbuff": "tab:orange"}
    labelled: set[str] = set()
    for r in results:
        xs = [p["t_s"] for p in r["curve"]]
        ys = [p["accuracy_mean_sites"] for p in r["curve"]]
        label = None if r["mode"] in labelled else r["mode"]
        labelled.add(r["mode"])
        ax.plot(xs, ys, color=colours[r["mode"]], alpha=0.7, marker=".", label=label)
    ax.axhline(target, color="grey", linestyle=":", label=f"target {target}")
    ax.set_xlabel("wall time since the first fit offer (s)")
    ax.set_ylabel("mean site accuracy")
    ax.set_title("Heart disease, cleveland 5x slower: async FedBuff vs sync FedYogi")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--slow-site", default="cleveland=5")
    parser.add_argument("--target", type=float, default=0.72)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for mode in MODES:
                out = pathlib.Path(tmp) / f"{mode}-{seed}"
                results.append(run_sim(mode, seed, args.slow_site, out))
                t = time_to(results[-1]["curve"], args.target)
                print(
                    f"seed {seed} {mode:14s} final acc "
                    f"{results[-1]['final']['accuracy_mean_sites']:.3f} "
                    f"time to {args.target}: {'never' if t is None else f'{t:.2f} s'}",
                    flush=True,
                )
    print(f"\n{'seed':>5} {'sync s':>8} {'async s':>8} {'async/sync':>10}")
    ratios = []
    for seed in args.seeds:
        sync, fast = (
            time_to(
                next(r for r in results if (r["seed"], r["mode"]) == (seed, m))["curve"],
                args.target,
            )
            for m in MODES
        )
        ratio = fast / sync if sync and fast is not None else None
        if ratio is not None:
            ratios.append(ratio)
        shown = "-" if ratio is None else f"{ratio:.2f}"
        print(f"{seed:>5} {_s(sync):>8} {_s(fast):>8} {shown:>10}")
    if ratios:
        print(f"median async/sync time to {args.target}: {statistics.median(ratios):.2f}")
    summary = {
        "target": args.target,
        "slow_site": args.slow_site,
        "runs": results,
        "ratios": ratios,
    }
    if args.json is not None:
        write_json(args.json, summary)
        plot(results, args.target, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
