"""ServerApp: FedAvg with a wall-clock, CPU and peak-RSS mark per round (through evaluate_fn)."""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedavg_bench.common import make_model

app = ServerApp()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    num_params = int(cfg["num-params"])
    num_nodes = int(cfg["num-nodes"])
    num_rounds = int(cfg["num-rounds"])
    out_file = str(cfg["out-file"])
    # Nodes trained per round; 0 = every node (the deployment benchmark). The simulation
    # benchmark (bench/sim_time.py) asks for 100 of 1,000 or 10,000 virtual nodes.
    cohort = int(cfg.get("cohort", 0))

    t0 = time.time()
    initial = make_model(num_params, int(cfg["num-arrays"]))
    # One mark per evaluate_fn call: round 0 (before round 1), then one after each round.
    marks: list[dict[str, float]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        now = time.time()
        rss_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        marks.append({"round": server_round, "t": now, "cpu": _cpu(), "maxrss_kb": rss_peak_kb})
        return MetricRecord({"t": now})

    # FedAvg samples max(int(connected * fraction_train), min_train_nodes) nodes, so a cohort is
    # fraction_train = cohort / N with min_train_nodes = cohort, which also covers the float
    # product rounding down. min_available_nodes = N: every node is registered before round 1.
    strategy = FedAvg(
        fraction_train=cohort / num_nodes if cohort else 1.0,
        fraction_evaluate=0.0,
        min_train_nodes=cohort or num_nodes,
        min_available_nodes=num_nodes,
    )
    t_start = time.time()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=num_rounds,
        evaluate_fn=evaluate_fn,
    )
    t_end = time.time()

    # Correctness check: FedAvg of identical inputs + per-client deltas
    final = result.arrays.to_numpy_ndarrays()
    res: dict[str, Any] = {
        "num_params": num_params,
        "num_nodes": num_nodes,
        "num_rounds": num_rounds,
        "cohort": cohort or num_nodes,
        "serverapp_pid": os.getpid(),
        "t_app_start": t0,
        "t_strategy_start": t_start,
        "t_end": t_end,
        "marks": marks,
        "final_total_params": sum(a.size for a in final),
        "final_mean_drift_arr0": float(np.mean(final[0] - initial[0])),
        "serverapp_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "serverapp_cpu_s": _cpu(),
    }
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    tmp = out_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, out_file)
