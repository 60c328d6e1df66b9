"""Update compression: upload bytes per round and accuracy after the same rounds, per codec.

Each cell is one `quorum sim` (no baselines) with `run.compression.upload` set: the bundled
heart-disease federation (examples/heart_disease/sim.toml: 4 hospitals, FedYogi, 15 rounds,
a 14-parameter logistic regression) and the 100-site MNIST federation of the robustness table
(examples/mnist/sim.toml, 9,098-parameter CNN, the cohort and rounds of bench/robust_table.py,
every site evaluating every round). Bytes are the fit uploads the server accepted, summed per
round (as the round record has them: on the wire, and what they would have been uncompressed),
averaged over the rounds. Accuracy is the global model's on the pooled test data after the
last round.

    python bench/compression_table.py                       # the README's table (~10 min)
    python bench/compression_table.py --workloads heart --codecs none,int8
    python bench/compression_table.py --workloads mnist --codecs none,topk10% --seed 1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, WORK_DIR, quorum_revision, run_sim, write_json
from bench.robust_table import CONFIG as MNIST_CONFIG
from bench.robust_table import mnist_sets
from quorum.task import load_task
from quorum.wire import blobs
from quorum.wire.codecs import CompressionConfig, make_codec

TASKS = {"heart": "examples.heart_disease.task:task", "mnist": "examples.mnist.task:task"}
CODECS: dict[str, list[str]] = {
    "none": ["run.compression.upload=none"],
    "fp16": ["run.compression.upload=fp16"],
    "bf16": ["run.compression.upload=bf16"],
    "int8": ["run.compression.upload=int8"],
    "topk10%": ["run.compression.upload=topk", "run.compression.fraction=0.1"],
    "topk1%": ["run.compression.upload=topk", "run.compression.fraction=0.01"],
}
WORKLOADS = ("heart", "mnist")
GOALS = {"fp16": (2.0, 0.005), "bf16": (2.0, 0.005), "int8": (4.0, 0.005), "topk10%": (10.0, 0.01)}
"""Issue 15's goals per codec: (bytes cut, at most this change of final accuracy)."""


def run_cell(workload: str, codec: str, args: argparse.Namespace) -> dict[str, Any]:
    seeded = "" if args.seed is None else f"_seed{args.seed}"
    out = WORK_DIR / "compression" / f"{workload}_{codec.replace('%', 'pc')}{seeded}"
    if workload == "heart":
        config, sets = "examples/heart_disease/sim.toml", []
    else:
        config, sets = MNIST_CONFIG, mnist_sets(args.rounds, args.cohort)
    seed = [f"run.seed={args.seed}"] if args.seed is not None else []
    result, error, wall = run_sim(config, out, [*sets, *CODECS[codec], *seed])
    cell: dict[str, Any] = {"workload": workload, "codec": codec, "wall_s": wall}
    if result is None:
        return {**cell, "status": "no report", "error": error}
    rows = result["rounds"]
    settings = CompressionConfig.model_validate(result["config"]["run"]["compression"])
    numel = sum(v.size for v in load_task(TASKS[workload]).initial_parameters(0).values())
    sent = [r["upload_bytes"] for r in rows]
    raw = [r["upload_bytes_uncompressed"] for r in rows]
    return {
        **cell,
        "status": result["status"],
        "rounds_completed": len(rows),
        "accuracy": rows[-1]["accuracy_pooled_test"] if rows else None,
        "upload_bytes_per_round": sum(sent) / len(rows) if rows else None,
        "uncompressed_bytes_per_round": sum(raw) / len(rows) if rows else None,
        # One update's tensors, without the safetensors header (which a tiny model's is mostly).
        "parameters": numel,
        "tensor_bytes": _tensor_bytes(settings, numel),
    }


def _tensor_bytes(settings: CompressionConfig, numel: int) -> int:
    codec = make_codec(settings)
    if codec is None:
        return 4 * numel  # the float32 model
    layout = blobs.read_layout(blobs.encode(codec.encode(np.zeros(numel))))
    return layout.size - layout.data_offset


def table(cells: list[dict[str, Any]]) -> str:
    lines = [
        "| workload (parameters) | codec | upload bytes / round | of uncompressed | cut "
        "| tensor bytes / update | final accuracy | Δ accuracy | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    plain = {c["workload"]: c.get("accuracy") for c in cells if c["codec"] == "none"}
    for c in cells:
        if c["status"] != "completed":
            lines.append(f"| {c['workload']} | {c['codec']} | {c['status']} | | | | | | |")
            continue
        sent, raw = c["upload_bytes_per_round"], c["uncompressed_bytes_per_round"]
        cut = raw / sent
        base = plain.get(c["workload"])
        change = None if base is None else c["accuracy"] - base
        goal = GOALS.get(c["codec"])
        verdict = ""
        if goal is not None and change is not None:
            met = cut >= goal[0] * 0.9 and abs(change) <= goal[1] + 1e-9  # 4-digit accuracies
            verdict = f"{goal[0]:g}x, ±{goal[1]:g}: " + ("met" if met else "missed")
        delta = "" if change is None else f"{change:+.4f}"
        lines.append(
            f"| {c['workload']} ({c['parameters']:,}) | {c['codec']} | {sent:,.0f} "
            f"| {sent / raw:.1%} | {cut:.1f}x | {c['tensor_bytes']:,} | {c['accuracy']:.4f} "
            f"| {delta} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="MNIST rounds")
    parser.add_argument("--cohort", type=int, default=15, help="MNIST sites per round (of 100)")
    parser.add_argument("--seed", type=int, help="the runs' seed (default: each config's)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--json", type=pathlib.Path, default=RESULTS_DIR / "compression_table.json")
    args = parser.parse_args()
    cells = []
    for workload in args.workloads.split(","):
        for codec in args.codecs.split(","):
            cell = run_cell(workload, codec, args)
            print(json.dumps(cell), flush=True)
            cells.append(cell)
    print(table(cells))
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    write_json(args.json, {"revision": quorum_revision(), "settings": settings, "cells": cells})


if __name__ == "__main__":
    main()
