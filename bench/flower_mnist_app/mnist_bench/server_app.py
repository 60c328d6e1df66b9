"""ServerApp: FedAvg over a cohort of the nodes, no federated evaluation, with a wall-clock,
CPU and peak-RSS mark per round through evaluate_fn (as bench/flower_app's)."""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from examples.mnist.task import task

app = ServerApp()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    num_nodes = int(str(cfg["num-nodes"]))
    num_rounds = int(str(cfg["num-rounds"]))
    cohort = int(str(cfg["cohort"]))
    out_file = str(cfg["out-file"])

    t0 = time.time()
    # The global model `quorum sim`'s server starts from: the task's initial parameters for the
    # run's seed.
    initial = task.initial_parameters(int(str(cfg["seed"])))
    marks: list[dict[str, float]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        now = time.time()
        rss_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        marks.append({"round": server_round, "t": now, "cpu": _cpu(), "maxrss_kb": rss_peak_kb})
        return MetricRecord({"t": now})

    # FedAvg samples max(int(connected * fraction_train), min_train_nodes) nodes: cohort / N with
    # min_train_nodes = cohort is exactly `cohort` nodes; every node registered before round 1.
    strategy = FedAvg(
        fraction_train=cohort / num_nodes,
        fraction_evaluate=0.0,
        min_train_nodes=cohort,
        min_available_nodes=num_nodes,
    )
    t_start = time.time()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(
            array_dict={k: Array.from_numpy_ndarray(v) for k, v in initial.items()}
        ),
        num_rounds=num_rounds,
        train_config=ConfigRecord(
            {
                "local-epochs": int(str(cfg["local-epochs"])),
                "batch-size": int(str(cfg["batch-size"])),
                "lr": float(str(cfg["lr"])),
            }
        ),
        evaluate_fn=evaluate_fn,
    )
    t_end = time.time()

    # The clients' example-weighted mean training loss per round: both sides train alike.
    train_loss = {
        int(r): float(str(m["loss"]))
        for r, m in result.train_metrics_clientapp.items()
        if "loss" in m
    }
    res: dict[str, Any] = {
        "num_nodes": num_nodes,
        "num_rounds": num_rounds,
        "cohort": cohort,
        "serverapp_pid": os.getpid(),
        "t_app_start": t0,
        "t_strategy_start": t_start,
        "t_end": t_end,
        "marks": marks,
        "train_loss": train_loss,
        "final_total_params": sum(a.size for a in result.arrays.to_numpy_ndarrays()),
        "serverapp_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "serverapp_cpu_s": _cpu(),
    }
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    tmp = out_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, out_file)
