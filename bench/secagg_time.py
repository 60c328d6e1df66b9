"""Round time under secure aggregation (SecAgg+): Quorum plain, Quorum SecAgg+, Flower SecAgg+.

One workload (bench/README.md: P float32 parameters, trivial local training, FedAvg over all N
sites) and five runs, one after the other, never two at once:

1. Quorum, plain rounds (the quorum side of bench/round_time.py);
2. Quorum, SecAgg+ (threshold 6, neighbours 8: neighbourhoods of 9, as Flower's num_shares 9
   - Flower's count includes the site itself), no dropout;
3. Quorum, SecAgg+, one site SIGKILLed as the unmask stage of the last round begins at it
   (`quorum client run --crash-at R:unmask`: its masked vector is already in the sum);
4. Flower, SecAggPlusWorkflow + secaggplus_mod (num_shares 9, reconstruction_threshold 6);
5. Flower, the same, one node silent in the unmask stage of the last round (45 s timeout).

Each run is bounded by --timeout and its process trees are killed by PID at the end. Raw JSON per
run goes to bench/results/<framework>_P<P>_N<N>_<variant>.json, the markdown tables to stdout and
bench/results/secagg_table.md.

    python bench/secagg_time.py                    # all five runs, ~8 min on 2 cores
    python bench/secagg_time.py --only quorum      # the three Quorum runs, ~1 min
    python bench/secagg_time.py --table-only       # the tables from bench/results JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    BENCH_DIR,
    RESULTS_DIR,
    ROUND_TIME_DEFINITION,
    RunSpec,
    quorum_revision,
    stop_on_sigterm,
    write_json,
)

FLOWER_APP_DIR = BENCH_DIR / "flower_secagg_app"
FRAMEWORKS = ("quorum", "flower")
OVERHEAD_GOAL = 1.5
"""Quorum's SecAgg+ round time over its own plain round time must stay at or below this."""
SPEEDUP_GOAL = 5.0
"""Flower's SecAgg+ round time over Quorum's SecAgg+ round time must reach this."""
QUORUM_STAGES = ("advertise-keys", "share-keys", "masked-input", "unmask")
FLOWER_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
"""Flower's names for the same four stages, in the same order."""
FLOWER_ANCHOR_S = {"secagg": 41.3, "secagg_drop": 74.0}
"""The reference kit's SecAgg+ figures on this machine (shared/reference/flower-bench/README.md):
median round with 9 shares / threshold 6, and the round in which a node went silent."""


@dataclass(frozen=True)
class Plan:
    """One run of the invocation: which side, which variant, and what the variant adds."""

    framework: str
    variant: str
    label: str
    rounds: int
    dropout: bool
    quorum: quorum_side.Options | None = None
    flower_config: dict[str, int | float | str] | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument(
        "--quorum-rounds",
        type=int,
        default=21,
        help="rounds per Quorum run, warm-up included (a round costs < 1 s)",
    )
    ap.add_argument("--flower-rounds", type=int, default=4, help="rounds of the Flower run")
    ap.add_argument(
        "--flower-drop-rounds", type=int, default=3, help="rounds of the Flower dropout run"
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threshold", type=int, default=6, help="shares needed per secret (both)")
    ap.add_argument(
        "--neighbours",
        type=int,
        default=8,
        help="Quorum's k; Flower's num_shares is k + 1 (it counts the site itself)",
    )
    ap.add_argument(
        "--stage-timeout",
        type=float,
        default=10.0,
        help="Quorum's secagg.stage_timeout_s (a SIGKILLed site is dropped when its connection "
        "breaks, not at this deadline)",
    )
    ap.add_argument(
        "--flower-timeout", type=float, default=90.0, help="SecAggPlusWorkflow timeout, no dropout"
    )
    ap.add_argument(
        "--flower-drop-timeout",
        type=float,
        default=45.0,
        help="SecAggPlusWorkflow timeout of the dropout run (the reference kit's 45 s)",
    )
    ap.add_argument(
        "--flower-drop-stage",
        choices=("unmask", "collect_masked_vectors"),
        default="unmask",
        help="the Flower stage at which the node goes silent",
    )
    ap.add_argument("--drop-site", type=int, default=3, help="partition id / site index to drop")
    ap.add_argument("--only", choices=FRAMEWORKS, help="run one framework")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per run")
    ap.add_argument("--interval", type=float, default=0.25, help="RSS sampling period (s)")
    ap.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: print the tables from bench/results JSON (implies --reuse)",
    )
    ap.add_argument(
        "--reuse", action="store_true", help="take runs not run now from bench/results JSON"
    )
    args = ap.parse_args(argv)
    if args.quorum_rounds - args.warmup < 3:
        ap.error("Quorum needs at least 3 measured rounds (--quorum-rounds - --warmup >= 3)")
    if min(args.flower_rounds, args.flower_drop_rounds) - args.warmup < 2:
        ap.error("each Flower run needs at least 2 rounds after the warm-up")
    if not 0 <= args.drop_site < args.nodes:
        ap.error("--drop-site must be a site index below --nodes")
    return args


def plans(args: argparse.Namespace) -> list[Plan]:
    secagg = {
        "enabled": True,
        "threshold": args.threshold,
        "neighbours": args.neighbours,
        "stage_timeout_s": args.stage_timeout,
    }
    last = args.quorum_rounds
    flower = {
        "num-shares": args.neighbours + 1,
        "reconstruction-threshold": args.threshold,
    }
    return [
        Plan("quorum", "plain", "Quorum, plain", last, False, quorum_side.Options("plain")),
        Plan(
            "quorum",
            "secagg",
            "Quorum, SecAgg+",
            last,
            False,
            quorum_side.Options("secagg", secagg),
        ),
        Plan(
            "quorum",
            "secagg_drop",
            f"Quorum, SecAgg+, site{args.drop_site} killed at {last}:unmask",
            last,
            True,
            quorum_side.Options("secagg_drop", secagg, {args.drop_site: f"{last}:unmask"}),
        ),
        Plan(
            "flower",
            "secagg",
            "Flower, SecAgg+",
            args.flower_rounds,
            False,
            flower_config={**flower, "timeout": args.flower_timeout},
        ),
        Plan(
            "flower",
            "secagg_drop",
            f"Flower, SecAgg+, node {args.drop_site} silent at "
            f"{args.flower_drop_rounds}:{args.flower_drop_stage}",
            args.flower_drop_rounds,
            True,
            flower_config={
                **flower,
                "timeout": args.flower_drop_timeout,
                "drop-node": args.drop_site,
                "drop-round": args.flower_drop_rounds,
                "drop-stage": args.flower_drop_stage,
                # Silent well past the stage's timeout: the answer never counts.
                "drop-sleep": args.flower_drop_timeout + 30.0,
            },
        ),
    ]


def result_path(spec: RunSpec, plan: Plan) -> Path:
    return RESULTS_DIR / f"{spec.tag(plan.framework, plan.variant)}.json"


def runner(plan: Plan) -> Callable[[RunSpec], dict[str, Any]]:
    if plan.framework == "quorum":
        return lambda spec: quorum_side.run(spec, plan.quorum)
    return lambda spec: flower_side.run(spec, FLOWER_APP_DIR, plan.flower_config, plan.variant)


def run_one(plan: Plan, spec: RunSpec) -> dict[str, Any]:
    tag = spec.tag(plan.framework, plan.variant)
    print(f"# {tag}: {plan.label}, {spec.rounds} rounds ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    revision = quorum_revision()
    result = runner(plan)(spec)
    result.update(
        label=plan.label,
        variant=plan.variant,
        dropout=plan.dropout,
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
    write_json(result_path(spec, plan), result)
    summary = summarise(result)
    print(
        f"#   median round {_fmt(summary.median_s, '.3f')} s, dropout round "
        f"{_fmt(summary.dropout_s, '.3f')} s, wall {result['wall_s']:.0f} s, "
        f"errors {result['errors']}",
        file=sys.stderr,
        flush=True,
    )
    return result


# ---- reading the results ----


@dataclass(frozen=True)
class Summary:
    median_s: float | None
    """Median round time over the measured rounds without a dropout."""
    measured: int
    dropout_s: float | None
    """The dropout round's time (completion to completion), for a dropout run."""
    stages: dict[str, float]
    """Median per-stage seconds over the same rounds as median_s, plus "outside"."""
    dropout_stages: dict[str, float]
    dropout_note: str
    peak_rss_mb: float | None
    errors: str = ""


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(result: dict[str, Any]) -> Summary:
    """Median round (measured rounds without the dropout), the dropout round, stage times."""
    times = [float(t) for t in result.get("round_times_s") or []]
    if result.get("errors") or not times:
        errors = "; ".join(result.get("errors") or []) or "no rounds recorded"
        return Summary(None, 0, None, {}, {}, "", None, errors)
    warmup = int(result.get("warmup", 1))
    # Round k (1-based) ends at times[k-1]; the dropout is in the last round.
    dropout = bool(result.get("dropout"))
    steady = times[warmup : len(times) - 1] if dropout else times[warmup:]
    steady_rounds = set(range(warmup + 1, warmup + 1 + len(steady)))
    last_round = len(times)
    if result["framework"] == "quorum":
        per_round, note = _quorum_stages(result, last_round)
    else:
        per_round, note = _flower_stages(result, last_round)
    durations = dict(enumerate(times, start=1))
    for rnd, stages in per_round.items():  # what the four stages do not cover
        if rnd in durations:
            stages["outside"] = durations[rnd] - sum(stages.values())
    stage_medians: dict[str, float] = {}
    for name in [*QUORUM_STAGES, *FLOWER_STAGES, "outside"]:
        value = _median([s[name] for r, s in per_round.items() if r in steady_rounds and name in s])
        if value is not None:
            stage_medians[name] = value
    return Summary(
        _median(steady),
        len(steady),
        times[-1] if dropout else None,
        stage_medians,
        per_round.get(last_round, {}) if dropout else {},
        note,
        result.get("server_peak_rss_mb"),
    )


def _quorum_stages(result: dict[str, Any], last: int) -> tuple[dict[int, dict[str, float]], str]:
    per_round: dict[int, dict[str, float]] = {}
    note = ""
    for record in result.get("secagg_rounds") or []:
        per_round[int(record["round"])] = {
            s["stage"]: float(s["duration_s"]) for s in record.get("stages", [])
        }
        if int(record["round"]) == last and result.get("dropout"):
            dropped = [
                f"{d['site']} in {s['stage']}: {d['reason']}"
                for s in record["stages"]
                for d in s.get("dropped", [])
            ]
            note = (
                f"dropped: {'; '.join(dropped) or 'none'}; recovered {record.get('recovered')}, "
                f"{record.get('survivors')} of {record.get('cohort')} vectors in the sum, "
                f"threshold {record.get('threshold')} of neighbourhood "
                f"{record.get('neighbourhood')}"
            )
    return per_round, note


def _flower_stages(result: dict[str, Any], last: int) -> tuple[dict[int, dict[str, float]], str]:
    per_round: dict[int, dict[str, float]] = {}
    note = ""
    for stage in result.get("secagg_stages") or []:
        per_round.setdefault(int(stage["round"]), {})[stage["stage"]] = float(stage["duration_s"])
        if int(stage["round"]) == last and result.get("dropout"):
            note += f"{stage['stage']}: {stage['active']} active after; "
    if note:
        cfg = result.get("run_config") or {}
        note = (
            f"node {cfg.get('drop-node')} silent at {cfg.get('drop-round')}:"
            f"{cfg.get('drop-stage')} for {cfg.get('drop-sleep')} s, workflow timeout "
            f"{cfg.get('timeout')} s; " + note.rstrip("; ")
        )
    return per_round, note


# ---- the tables ----


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _verdict(ok: bool) -> str:
    return "✅ met" if ok else "❌ not met"


def tables(
    results: dict[str, dict[str, Any]], spec_line: str, settings_line: str
) -> tuple[str, dict[str, Any]]:
    """The markdown, and the ratios and verdicts (for the JSON summary)."""
    sums = {key: summarise(result) for key, result in results.items()}
    plain = sums.get("quorum_plain")
    q_sec = sums.get("quorum_secagg")
    f_sec = sums.get("flower_secagg")
    q_drop = sums.get("quorum_secagg_drop")
    f_drop = sums.get("flower_secagg_drop")
    lines = [
        spec_line,
        "",
        "| Run | Median round (s) | Rounds | Dropout round (s) | × Quorum plain "
        "| × Quorum SecAgg+ | Model check | Server peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = plain.median_s if plain else None
    q_base = q_sec.median_s if q_sec else None
    for key, result in results.items():
        s = sums[key]
        lines.append(
            f"| {result.get('label', key)} | {_fmt(s.median_s, '.3f')} | {s.measured} "
            f"| {_fmt(s.dropout_s, '.3f')} | {_ratio(s.median_s, base)} "
            f"| {_ratio(s.median_s, q_base)} | {model_check(result)} "
            f"| {_fmt(s.peak_rss_mb, '.0f')} |"
        )
    lines += [
        "",
        "*Model check*: the final model's mean drift from the initial one over its first "
        "array, divided by what FedAvg of the sites' constant steps gives "
        "(1e-4·(N+1)/2·Σ_r (1 + r mod 3)); 1.000 is exact. A dropout after masked input "
        "leaves the expected value unchanged (that site's vector is in the sum).",
        "",
        "Per stage, median seconds over the same rounds (the dropout round alone on its own "
        "line). Quorum: advertise-keys / share-keys / masked-input (offer, model download, "
        "training, masking, upload) / unmask, from the round's `secagg` record; Flower: setup / "
        "share_keys / collect_masked_vectors / unmask, timed around SecAggPlusWorkflow's stage "
        "methods. *Outside*: the round time minus the four stages (Quorum: selecting the cohort "
        "and opening the round; after the unmask stage, rebuilding the masks and the sum, the "
        "strategy step, the checkpoint; Flower: configure_fit, the legacy strategy's "
        "aggregation and evaluate_fn).",
        "",
        "| Run | keys | shares | masked input | unmask | outside |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, result in results.items():
        s = sums[key]
        names = QUORUM_STAGES if result["framework"] == "quorum" else FLOWER_STAGES
        if not s.stages:
            continue
        lines.append(_stage_row(result.get("label", key), names, s.stages))
        if s.dropout_stages:
            lines.append(_stage_row("↳ its dropout round", names, s.dropout_stages))
    notes = [
        f"- {results[k].get('label', k)}: {sums[k].dropout_note}"
        for k in results
        if sums[k].dropout_note
    ]
    overhead = q_sec.median_s / base if q_sec and q_sec.median_s and base else None
    speedup = f_sec.median_s / q_base if f_sec and f_sec.median_s and q_base else None
    drop_speedup = (
        f_drop.dropout_s / q_drop.dropout_s
        if f_drop and q_drop and f_drop.dropout_s and q_drop.dropout_s
        else None
    )
    lines += ["", "| Goal | Measured | Result |", "|---|---:|---|"]
    lines.append(
        f"| Quorum SecAgg+ round ≤ {OVERHEAD_GOAL:g}× Quorum plain round "
        f"| {_fmt(overhead, '.2f')}× | {_verdict(overhead <= OVERHEAD_GOAL) if overhead else '—'} |"
    )
    lines.append(
        f"| Quorum SecAgg+ round ≥ {SPEEDUP_GOAL:g}× faster than Flower SecAgg+ "
        f"| {_fmt(speedup, '.1f')}× | {_verdict(speedup >= SPEEDUP_GOAL) if speedup else '—'} |"
    )
    lines.append(f"| (dropout round, no goal) Flower / Quorum | {_fmt(drop_speedup, '.1f')}× | |")
    anchor = FLOWER_ANCHOR_S["secagg"] / q_base if q_base else None
    lines += [
        "",
        f"Reference kit's Flower SecAgg+ figures on this machine: {FLOWER_ANCHOR_S['secagg']} s "
        f"a round ({_fmt(anchor, '.1f')}× Quorum's SecAgg+ round), "
        f"{FLOWER_ANCHOR_S['secagg_drop']} s for the round with a dropout (before masked "
        "input, 45 s timeout).",
        "",
        settings_line,
        f"Round time: {ROUND_TIME_DEFINITION}; for a dropout run, the median leaves out the "
        "last (dropout) round, which is reported on its own.",
    ]
    if notes:
        lines += ["", "Dropout rounds:", *notes]
    errors = [
        f"- {results[k].get('label', k)}: {sums[k].errors}" for k in results if sums[k].errors
    ]
    if errors:
        lines += ["", "Failed runs:", *errors]
    verdicts = {
        "overhead_ratio": overhead,
        "overhead_goal": OVERHEAD_GOAL,
        "overhead_met": None if overhead is None else overhead <= OVERHEAD_GOAL,
        "speedup_ratio": speedup,
        "speedup_goal": SPEEDUP_GOAL,
        "speedup_met": None if speedup is None else speedup >= SPEEDUP_GOAL,
        "dropout_round_ratio": drop_speedup,
    }
    return "\n".join(lines), verdicts


def expected_drift(nodes: int, rounds: int) -> float:
    """The final model's mean drift under exact FedAvg: site i adds 1e-4·(i+1)·(1 + r mod 3)
    in round r, all sites weigh the same (bench/tasks.py, the Flower apps)."""
    return 1e-4 * (nodes + 1) / 2 * sum(1 + r % 3 for r in range(1, rounds + 1))


def model_check(result: dict[str, Any]) -> str:
    drift = result.get("final_mean_drift_arr0")
    rounds = len(result.get("round_times_s") or [])
    if drift is None or not rounds:
        return "—"
    return f"{drift / expected_drift(int(result['nodes']), rounds):.3f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.1f}×" if value >= 10 * base else f"{value / base:.2f}×"


def _stage_row(label: str, names: tuple[str, ...], stages: dict[str, float]) -> str:
    cells = " | ".join(_fmt(stages.get(n), ".3f") for n in [*names, "outside"])
    return f"| {label} | {cells} |"


def settings_text(results: dict[str, dict[str, Any]]) -> str:
    """The SecAgg+ settings the runs used, as recorded in their JSON."""
    parts = []
    run = next((r for r in results.values() if "secagg_settings" in r), None)
    if run:
        quorum = run["secagg_settings"]
        complete = int(quorum["neighbours"]) >= int(run["nodes"]) - 1
        parts.append(
            "Quorum `[run.secagg]` "
            + ", ".join(f"{k} = {v}" for k, v in quorum.items())
            + (" (the complete graph)" if complete else "")
            + "; clip_range 8.0, quantization_bits 20, max_weight 1000 (defaults)"
        )
    for key, what in (("flower_secagg", "no dropout"), ("flower_secagg_drop", "dropout run")):
        cfg = results.get(key, {}).get("run_config")
        if cfg:
            parts.append(
                f"Flower SecAggPlusWorkflow ({what}) num_shares = {cfg['num-shares']}, "
                f"reconstruction_threshold = {cfg['reconstruction-threshold']}, "
                f"timeout = {cfg['timeout']} s, clipping_range 8.0, quantization_range 2^22, "
                "max_weight 1000 (defaults)"
            )
    return "Settings: " + "; ".join(parts) + "." if parts else ""


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for plan in plans(args):
        spec = RunSpec(
            args.params, args.nodes, plan.rounds, args.warmup, args.timeout, args.interval
        )
        key = f"{plan.framework}_{plan.variant}"
        if not args.table_only and args.only in (None, plan.framework):
            results[key] = run_one(plan, spec)
        elif (args.reuse or args.table_only) and result_path(spec, plan).exists():
            results[key] = json.loads(result_path(spec, plan).read_text())
    spec_line = (
        f"P = {args.params:,} float32 parameters, N = {args.nodes} sites, trivial local "
        f"training (bench.tasks:TASK / bench/flower_secagg_app); {os.cpu_count()} CPUs, "
        "loopback."
    )
    settings_line = settings_text(results)
    text, verdicts = tables(results, spec_line, settings_line)
    (RESULTS_DIR / "secagg_table.md").parent.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "secagg_table.md").write_text(text + "\n")
    if not args.table_only:
        write_json(
            RESULTS_DIR / "secagg_summary.json",
            {**verdicts, "runs": sorted(results), "invocation_wall_s": time.monotonic() - started},
        )
    print(text)
    print(f"# invocation took {time.monotonic() - started:.0f} s", file=sys.stderr)
    failed = [r.get("tag") for r in results.values() if r.get("errors")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
