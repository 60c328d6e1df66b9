"""Round time and server memory, Quorum against Flower, on one workload and one machine.

For each model size P and site count N: a Quorum run (server + N site agents) and a Flower run
(SuperLink + N SuperNodes, the reference kit's way), one after the other, never at once. Each
run is bounded by --timeout and its process trees are killed by PID at the end. Raw JSON per
run goes to bench/results/<framework>_P<P>_N<N>.json; the markdown table to stdout (and
bench/results/table.md).

    python bench/round_time.py                       # the full grid, both frameworks
    python bench/round_time.py --params 1000000 --nodes 2 --only quorum
    python bench/round_time.py --params 10000000 --nodes 10 --compression int8   # Quorum only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import flower_side, quorum_side
from bench.common import (
    RESULTS_DIR,
    ROUND_TIME_DEFINITION,
    RunSpec,
    quorum_revision,
    stop_on_sigterm,
    write_json,
)
from quorum.wire.codecs import CODEC_NAMES

FRAMEWORKS = ("quorum", "flower")
RUNNERS: dict[str, Callable[[RunSpec], dict[str, Any]]] = {
    "quorum": quorum_side.run,
    "flower": flower_side.run,
}
SPEEDUP_GOAL = {1_000_000: 10.0, 10_000_000: 3.0}
"""Flower round time / Quorum round time must reach this, per P."""
RSS_GROWTH_GOAL = 1.5
"""Quorum's server peak RSS at N=25 over its own at N=2, same P."""
FLOWER_ANCHOR_S = {
    (1_000_000, 2): 6.22,
    (1_000_000, 10): 12.11,
    (1_000_000, 25): 30.34,
    (10_000_000, 2): 6.60,
    (10_000_000, 10): 18.67,
    (10_000_000, 25): 45.04,
}
"""Flower's median round times in the reference kit (shared/reference/flower-bench/README.md),
measured on this machine when it was not shared: a second yardstick when a Flower run here is
slowed down by other work."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 10, 25])
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", choices=FRAMEWORKS, help="run one framework")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    ap.add_argument("--interval", type=float, default=0.25, help="RSS sampling period (s)")
    ap.add_argument(
        "--compression",
        choices=[c for c in CODEC_NAMES if c != "none"],
        help="Quorum only: the sites upload their updates encoded so (run.compression.upload, "
        "top-k at 10%%); results go to quorum_P<P>_N<N>_compression-<CODEC>.json",
    )
    ap.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: print the table from bench/results JSON (implies --reuse)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="fill table cells not run now from earlier bench/results JSON",
    )
    args = ap.parse_args(argv)
    if args.compression:
        args.only = "quorum"
    if args.rounds - args.warmup < 3:
        ap.error("need at least 3 measured rounds (--rounds - --warmup >= 3)")
    return args


def run_grid(args: argparse.Namespace) -> dict[tuple[str, int, int], dict[str, Any]]:
    frameworks = [args.only] if args.only else list(FRAMEWORKS)
    results: dict[tuple[str, int, int], dict[str, Any]] = {}
    for params in args.params:
        for nodes in args.nodes:
            spec = RunSpec(params, nodes, args.rounds, args.warmup, args.timeout, args.interval)
            for framework in frameworks:
                results[(framework, params, nodes)] = run_one(framework, spec, args.compression)
    return results


def run_one(framework: str, spec: RunSpec, compression: str | None = None) -> dict[str, Any]:
    variant = f"compression-{compression}" if compression else ""
    print(
        f"# {spec.tag(framework, variant)}: {spec.rounds} rounds ...", file=sys.stderr, flush=True
    )
    started = time.monotonic()
    load_before = os.getloadavg()
    revision = quorum_revision()
    if compression:
        run = {"compression": {"upload": compression}}
        result = quorum_side.run(spec, quorum_side.Options(variant=variant, run=run))
    else:
        result = RUNNERS[framework](spec)
    # The machine is shared: a high load average marks a run whose times are inflated.
    result.update(
        quorum_revision=revision,
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
        params=spec.params,
        nodes=spec.nodes,
        rounds=spec.rounds,
        warmup=spec.warmup,
        wall_s=time.monotonic() - started,
        finished_unix=time.time(),
    )
    write_json(RESULTS_DIR / f"{spec.tag(framework, variant)}.json", result)
    median = result.get("round_time_stats", {}).get("median")
    print(
        f"#   median round {_fmt(median, '.3f')} s, server peak RSS "
        f"{_fmt(result.get('server_peak_rss_mb'), '.0f')} MB, errors {result['errors']}",
        file=sys.stderr,
        flush=True,
    )
    return result


def load_previous(key: tuple[str, int, int]) -> dict[str, Any] | None:
    framework, params, nodes = key
    path = RESULTS_DIR / f"{framework}_P{params}_N{nodes}.json"
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@dataclass(frozen=True)
class Cell:
    round_s: float | None
    rss_mb: float | None


def cell(result: dict[str, Any] | None) -> Cell:
    if result is None or result.get("errors"):
        return Cell(None, None)
    return Cell(result.get("round_time_stats", {}).get("median"), result.get("server_peak_rss_mb"))


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _verdict(value: float | None, ok: bool) -> str:
    return "" if value is None else (" ✅" if ok else " ❌")


def table(
    results: dict[tuple[str, int, int], dict[str, Any]], params: list[int], nodes: list[int]
) -> str:
    lines = [
        "| P | N | Flower round (s) | Quorum round (s) | Flower/Quorum (goal) "
        "| Flower anchor / Quorum | Flower server peak RSS (MB) | Quorum server peak RSS (MB) "
        "| Quorum RSS / own N=2 (goal) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in params:
        base = cell(results.get(("quorum", p, 2))).rss_mb
        for n in nodes:
            fl, qu = cell(results.get(("flower", p, n))), cell(results.get(("quorum", p, n)))
            anchor = Cell(FLOWER_ANCHOR_S.get((p, n)), None)
            lines.append(
                f"| {p:,} | {n} | {_fmt(fl.round_s, '.2f')} | {_fmt(qu.round_s, '.3f')} "
                f"| {_speedup(fl, qu, p)} | {_speedup(anchor, qu, p)} "
                f"| {_fmt(fl.rss_mb, '.0f')} "
                f"| {_fmt(qu.rss_mb, '.0f')} | {_growth(qu, base, n)} |"
            )
    lines.append("")
    lines.append(
        f"Round time: {ROUND_TIME_DEFINITION}. Server peak RSS: the largest sum of RSS "
        "over the server process tree, sampled from /proc every 0.25 s (Quorum: "
        "`quorum server start`; Flower: `flower-superlink` and the `flwr-serverapp` it "
        "spawns)."
    )
    return "\n".join(lines)


def _speedup(fl: Cell, qu: Cell, params: int) -> str:
    if fl.round_s is None or not qu.round_s:
        return "—"
    ratio = fl.round_s / qu.round_s
    goal = SPEEDUP_GOAL.get(params)
    if goal is None:
        return f"{ratio:.1f}×"
    return f"{ratio:.1f}× (≥ {goal:g}×){_verdict(ratio, ratio >= goal)}"


def _growth(qu: Cell, base: float | None, nodes: int) -> str:
    if qu.rss_mb is None or not base:
        return "—"
    ratio = qu.rss_mb / base
    if nodes != 25:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} (≤ {RSS_GROWTH_GOAL:g}){_verdict(ratio, ratio <= RSS_GROWTH_GOAL)}"


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    results = {} if args.table_only else run_grid(args)
    params, nodes = sorted(args.params), sorted(args.nodes)
    if args.reuse or args.table_only:
        for key in [(f, p, n) for f in FRAMEWORKS for p in params for n in {2, *nodes}]:
            if key not in results and (previous := load_previous(key)) is not None:
                results[key] = previous
    text = table(results, params, nodes)
    if not args.compression:  # the table compares plain runs with Flower's
        (RESULTS_DIR / "table.md").write_text(text + "\n")
    print(text)
    failed = [r["tag"] for r in results.values() if r.get("errors")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
