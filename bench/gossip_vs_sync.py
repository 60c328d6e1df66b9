"""Gossip against sync FedYogi on heart disease (issue 5's bar), through `quorum sim`.

For each seed it runs the example federation (examples/heart_disease/sim.toml: FLamby's protocol,
15 rounds of 100 local SGD steps, batch 4, lr 0.003162) twice, with real processes over loopback:

- sync: the example as it is (FedYogi, server lr 0.01);
- gossip: `run.mode = "gossip"`, `run.topology = "exponential"` (one peer per round), the same
  site settings and rounds; the server only relays ciphertext.

It prints, per seed, the final mean site accuracy of both (each site's accuracy on its own test
set, unweighted mean; for gossip each site tests its own mixed model), their difference, the
consensus distance of every gossip round and its mean over the last cycle of the topology (two
rounds for four sites on the exponential graph, whose rounds alternate between nearer and
farther pairs), and the first round from which each falls at every round to the end. The bar:
|gossip - sync| <= 0.02 after the same number of rounds, and the consensus distance falling
every round once training settles.

    python bench/gossip_vs_sync.py                     # seeds 42-46, ~4 min on 2 cores
    python bench/gossip_vs_sync.py --seeds 42 --set run.rounds=30 --json out.json
    python bench/gossip_vs_sync.py --gossip-set run.gossip_lr_decay=0.9   # gossip only
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
from typing import Any

from bench.common import REPO, VENV_BIN, WORK_DIR, child_env, quorum_revision, write_json

CONFIG = REPO / "examples" / "heart_disease" / "sim.toml"
GOSSIP = ["run.mode=gossip", "run.strategy=fedavg", "run.topology=exponential"]


def simulate(name: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    out = WORK_DIR / f"gossip_vs_sync_{name}_{seed}"
    report = out / "report.json"
    args = [str(VENV_BIN / "quorum"), "sim", "--config", str(CONFIG), "--seed", str(seed)]
    for item in ["sim.baselines=false", f"sim.output_dir={out}", *overrides]:
        args += ["--set", item]
    done = subprocess.run(
        [*args, "--report", str(report)],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        sys.exit(f"{name} seed {seed} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def settles_at(distances: list[float]) -> int | None:
    """The first round (from 1) from which the distance falls at every later round."""
    start = len(distances)
    while start > 1 and distances[start - 1] < distances[start - 2]:
        start -= 1
    return start if start < len(distances) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--gossip-set", dest="gossip_overrides", action="append", default=[])
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        sync = simulate("sync", seed, args.overrides)
        gossip = simulate("gossip", seed, [*GOSSIP, *args.overrides, *args.gossip_overrides])
        distances = [r["gossip"]["consensus_distance"] for r in gossip["rounds"]]
        cycle = [r["gossip"]["consensus_distance_cycle"] for r in gossip["rounds"]]
        rows.append(
            {
                "seed": seed,
                "rounds": len(gossip["rounds"]),
                "sync_accuracy": sync["final"]["accuracy_mean_sites"],
                "gossip_accuracy": gossip["final"]["accuracy_mean_sites"],
                "gossip_site_accuracy": gossip["rounds"][-1]["gossip"]["site_accuracy"],
                "consensus_distance": distances,
                "settles_at": settles_at(distances),
                "consensus_distance_cycle": cycle,
                "cycle_settles_at": settles_at(cycle),
                "sync_wall_s": sync["wall_time_s"],
                "gossip_wall_s": gossip["wall_time_s"],
            }
        )
        row = rows[-1]
        row["difference"] = row["gossip_accuracy"] - row["sync_accuracy"]
        print(
            f"seed {seed}: sync {row['sync_accuracy']:.3f}  gossip {row['gossip_accuracy']:.3f}  "
            f"diff {row['difference']:+.3f}  falls from round {row['settles_at']} "
            f"(cycle mean: {row['cycle_settles_at']})\n  consensus "
            f"{' '.join(f'{d:.3f}' for d in distances)}\n  cycle mean "
            f"{' '.join(f'{d:.3f}' for d in cycle)}",
            flush=True,
        )
    mean_sync = statistics.mean(r["sync_accuracy"] for r in rows)
    mean_gossip = statistics.mean(r["gossip_accuracy"] for r in rows)
    worst = max(abs(r["difference"]) for r in rows)
    print(
        f"mean: sync {mean_sync:.3f}  gossip {mean_gossip:.3f}  diff {mean_gossip - mean_sync:+.3f}"
        f"  worst |diff| {worst:.3f}  bar 0.02: {'met' if worst <= 0.02 else 'missed'} per seed, "
        f"{'met' if abs(mean_gossip - mean_sync) <= 0.02 else 'missed'} on the mean"
    )
    if args.json:
        write_json(
            args.json,
            {"revision": quorum_revision(), "overrides": args.overrides, "seeds": rows},
        )


if __name__ == "__main__":
    main()
