"""Runs one of the test Flower apps under Flower's own simulation (Ray backend), two
supernodes, FedAvg, as a Flower project's ServerApp would; prints the last round's evaluation
metrics (weighted by each node's examples, as Flower aggregates them) as JSON to OUT (not to
stdout, where Ray forwards its workers' output).

    python -m tests.flower_apps.flower_sim {numpy,message} ROUNDS LR OUT
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from tests.flower_apps import message_app, numpy_app
from tests.flower_apps.quorum_task import initial

SUPERNODES = 2


def weighted(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    total = sum(n for n, _ in results)
    return {k: sum(n * m[k] for n, m in results) / total for k in results[0][1]}


def main() -> None:
    kind, rounds, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    model = initial(0)
    config = {"lr": lr, "local-epochs": 1}
    last: dict[str, Any] = {}
    if kind == "message":
        server_app = ServerApp()

        @server_app.main()
        def run(grid: Grid, context: Context) -> None:
            strategy = FedAvg(min_available_nodes=SUPERNODES)
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord({k: Array(v) for k, v in model.items()}),
                train_config=ConfigRecord(config),
                num_rounds=rounds,
            )
            last.update(result.evaluate_metrics_clientapp[rounds])

        client_app = message_app.app
    else:

        def record(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
            last.update(weighted(results))
            return last

        strategy = LegacyFedAvg(
            min_available_clients=SUPERNODES,
            initial_parameters=ndarrays_to_parameters(list(model.values())),
            on_fit_config_fn=lambda _: config,
            evaluate_metrics_aggregation_fn=record,
        )
        server_app = ServerApp(config=ServerConfig(num_rounds=rounds), strategy=strategy)
        client_app = numpy_app.app
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=SUPERNODES,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    pathlib.Path(sys.argv[4]).write_text(json.dumps(last))


if __name__ == "__main__":
    main()
