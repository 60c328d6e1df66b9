"""ServerApp: the legacy FedAvg in DefaultWorkflow, its fit rounds through SecAggPlusWorkflow.

One mark per evaluate_fn call (round 0, then once after each round), as bench/flower_app does, and
the wall time of each SecAgg+ stage of each round. Written to `out-file` as JSON at the end.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid, ServerApp

from secaggplus_bench.common import make_model

app = ServerApp()

Stage = Callable[[Grid, LegacyContext, Any], bool]


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class StageTimedWorkflow(SecAggPlusWorkflow):
    """SecAggPlusWorkflow that logs the wall time of each of its four stages, and how many
    nodes were still in the protocol after it."""

    def __init__(self, log: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_log = log

    def _timed(self, name: str, stage: Stage, grid: Grid, ctx: LegacyContext, state: Any) -> bool:
        server_round = int(
            str(ctx.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        )
        start = time.time()
        ok = stage(grid, ctx, state)
        self.stage_log.append(
            {
                "round": server_round,
                "stage": name,
                "t0": start,
                "t1": time.time(),
                "duration_s": time.time() - start,
                "ok": bool(ok),
                "active": len(getattr(state, "active_node_ids", None) or ()),
            }
        )
        return bool(ok)

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return self._timed("setup", super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return self._timed("share_keys", super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return self._timed(
            "collect_masked_vectors", super().collect_masked_vectors_stage, grid, context, state
        )

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return self._timed("unmask", super().unmask_stage, grid, context, state)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    num_params = int(str(cfg["num-params"]))
    num_nodes = int(str(cfg["num-nodes"]))
    num_rounds = int(str(cfg["num-rounds"]))
    out_file = str(cfg["out-file"])
    initial = make_model(num_params, int(str(cfg["num-arrays"])))
    marks: list[dict[str, float]] = []
    stages: list[dict[str, Any]] = []
    latest: list[NDArrays] = []

    def evaluate_fn(
        server_round: int, arrays: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]] | None:
        marks.append(
            {"round": server_round, "t": time.time(), "cpu": _cpu_s(), "maxrss_kb": _maxrss_kb()}
        )
        latest[:] = [arrays]
        return None

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return {"server-round": server_round}

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=num_nodes,
        min_available_clients=num_nodes,
        initial_parameters=ndarrays_to_parameters(initial),
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=fit_config,
    )
    workflow = StageTimedWorkflow(
        stages,
        num_shares=int(str(cfg["num-shares"])),
        reconstruction_threshold=int(str(cfg["reconstruction-threshold"])),
        timeout=float(str(cfg["timeout"])),
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy
    )
    t_start = time.time()
    DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
    t_end = time.time()

    final = latest[0] if latest else []
    result: dict[str, Any] = {
        "num_params": num_params,
        "num_nodes": num_nodes,
        "num_rounds": num_rounds,
        "num_shares": int(str(cfg["num-shares"])),
        "reconstruction_threshold": int(str(cfg["reconstruction-threshold"])),
        "timeout_s": float(str(cfg["timeout"])),
        "t_strategy_start": t_start,
        "t_end": t_end,
        "marks": marks,
        "stages": stages,
        "final_total_params": int(sum(a.size for a in final)),
        # SecAgg+ quantizes the updates: this drift is close to, not equal to, plain FedAvg's.
        "final_mean_drift_arr0": float(np.mean(final[0] - initial[0])) if final else None,
        "serverapp_maxrss_kb": _maxrss_kb(),
        "serverapp_cpu_s": _cpu_s(),
    }
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    tmp = out_file + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1)
    os.replace(tmp, out_file)
