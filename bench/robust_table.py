"""Byzantine robustness on the 100-site MNIST federation: every strategy against every attack.

Each cell is one `quorum sim --config examples/mnist/sim.toml` (100 Dirichlet(0.5) sites, the
9,098-parameter CNN), with 20% of the sites hostile (`--byzantine 0.2=ATTACK`, the same sites
for every attack: the draw is seeded by the run's seed), the same rounds and cohort for every
cell, no baselines, and every site evaluating every round, so that the accuracy is that of the
global model on all 2,000 test images. A run that fails (a model gone to NaN or infinity is
never sent: its round aborts, five aborts fail the run) shows its last completed round's
accuracy, marked `*`.

    python bench/robust_table.py                            # the README's table (~20 min)
    python bench/robust_table.py --rounds 5 --strategies fedavg,fedmedian --attacks none,scale:10
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from bench.common import RESULTS_DIR, WORK_DIR, run_sim

CONFIG = "examples/mnist/sim.toml"
STRATEGIES: dict[str, list[str]] = {
    "fedavg": ["run.strategy=fedavg"],
    "fedmedian": ["run.strategy=fedmedian"],
    "fedtrimmedavg": ["run.strategy=fedtrimmedavg", "run.beta=0.2"],
    "krum": ["run.strategy=krum", "run.num_malicious_nodes=3"],
    "multikrum": ["run.strategy=multikrum", "run.num_malicious_nodes=3"],
    "bulyan": ["run.strategy=bulyan", "run.num_malicious_nodes=3"],
    "fedavg+norm_bound": ["run.strategy=fedavg", "run.norm_bound=1.0"],
}
ATTACKS = ["none", "signflip", "scale:10", "noise:1.0", "labelflip", "alie"]


def mnist_sets(rounds: int, cohort: int) -> list[str]:
    """The 100-site MNIST federation as the tables run it: `rounds` rounds of `cohort` sites,
    every site evaluating every round (the accuracy is on all 2,000 test images)."""
    return [
        f"run.rounds={rounds}",
        f"run.fraction_fit={cohort / 100}",
        f"run.min_fit_sites={cohort}",
        f"run.max_fit_sites={cohort}",
        "run.fraction_evaluate=1.0",
    ]


def run_cell(strategy: str, attack: str, args: argparse.Namespace) -> dict[str, Any]:
    out = WORK_DIR / "robust" / f"{strategy}_{attack.replace(':', '-')}"
    byzantine = ["--byzantine", f"{args.fraction}={attack}"] if attack != "none" else []
    result, error, wall = run_sim(
        CONFIG, out, [*mnist_sets(args.rounds, args.cohort), *STRATEGIES[strategy]], byzantine
    )
    cell: dict[str, Any] = {"strategy": strategy, "attack": attack, "wall_s": wall}
    if result is None:
        return {**cell, "status": "no report", "error": error}
    rows = result["rounds"]
    return {
        **cell,
        "status": result["status"],
        "rounds_completed": len(rows),
        "accuracy": rows[-1]["accuracy_pooled_test"] if rows else None,
        "hostile_sites": len(result["byzantine"]),
        "aborted_rounds": len(result["aborted_rounds"]),
    }


def table(cells: list[dict[str, Any]], strategies: list[str], attacks: list[str]) -> str:
    by = {(c["strategy"], c["attack"]): c for c in cells}
    lines = [
        "| strategy | " + " | ".join(attacks) + " |",
        "|---" * (len(attacks) + 1) + "|",
    ]
    for s in strategies:
        row = []
        for a in attacks:
            c = by[(s, a)]
            acc = c.get("accuracy")
            text = "—" if acc is None else f"{acc:.3f}"
            row.append(text + ("" if c["status"] == "completed" else "*"))
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cohort", type=int, default=15, help="sites per round (of 100)")
    parser.add_argument("--fraction", type=float, default=0.2, help="hostile sites")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--json", type=pathlib.Path, default=RESULTS_DIR / "robust_table.json")
    args = parser.parse_args()
    strategies, attacks = args.strategies.split(","), args.attacks.split(",")
    cells = []
    for strategy in strategies:
        for attack in attacks:
            cell = run_cell(strategy, attack, args)
            print(json.dumps(cell), flush=True)
            cells.append(cell)
    print(table(cells, strategies, attacks))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    args.json.write_text(json.dumps({"settings": settings, "cells": cells}, indent=2) + "\n")


if __name__ == "__main__":
    main()
