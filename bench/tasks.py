"""The benchmark workload as a Quorum task: numpy only, the same as Flower's fedavg_bench app.

Local "training" is free (add a constant), so a round costs only what the framework does:
offer, download, upload, validate, aggregate, checkpoint. No torch import, so 25 site processes
start in a second or two each.

The model size P is read by the server from the environment variable QUORUM_BENCH_PARAMS
(default 1,000,000), because `initial_parameters(seed)` gets no other input; sites never need it,
they receive the model. A site's `--data` is its partition id ("0", "1", ...), which sets its
perturbation exactly as Flower's `partition-id` node config does in bench/flower_app.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from quorum.errors import TaskError
from quorum.task import EvalResult, FitResult, JSONConfig
from quorum.wire.blobs import Params

PARAMS_ENV = "QUORUM_BENCH_PARAMS"
DEFAULT_PARAMS = 1_000_000
NUM_ARRAYS = 8
"""The Flower app's `num-arrays` default: P float32 values split into 8 arrays."""


def array_sizes(num_params: int, num_arrays: int = NUM_ARRAYS) -> list[int]:
    """Equal arrays, the remainder on the last one (as fedavg_bench.common.make_model)."""
    base = num_params // num_arrays
    sizes = [base] * num_arrays
    sizes[-1] += num_params - base * num_arrays
    return sizes


def make_model(num_params: int, seed: int = 0) -> Params:
    """The same values as the Flower app's make_model (rng seeded 0, N(0, 0.01²), float32)."""
    rng = np.random.default_rng(seed)
    # Zero-padded names keep safetensors' name order equal to the Flower app's array order.
    return {
        f"w{i:02d}": rng.standard_normal(size, dtype=np.float32) * np.float32(0.01)
        for i, size in enumerate(array_sizes(num_params))
    }


def delta(partition_id: int, server_round: int) -> np.float32:
    """Trivial local training: the Flower app's deterministic constant per site and round."""
    return np.float32(1e-4 * (partition_id + 1) * (1 + server_round % 3))


@dataclass(frozen=True)
class BenchSite:
    partition_id: int

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        step = delta(self.partition_id, int(config.get("round", 0)))
        return FitResult({name: value + step for name, value in params.items()}, num_examples=1)

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        # Never called by the benchmark (fraction_evaluate = 0); kept trivial to satisfy the API.
        return EvalResult(num_examples=1, metrics={"loss": 0.0})


class BenchTask:
    """The FederatedTask a benchmark run names as `bench.tasks:TASK`."""

    def initial_parameters(self, seed: int) -> Params:
        raw = os.environ.get(PARAMS_ENV, str(DEFAULT_PARAMS))
        try:
            num_params = int(raw)
        except ValueError:
            raise TaskError(f"{PARAMS_ENV}={raw!r} is not an integer") from None
        if num_params < NUM_ARRAYS:
            raise TaskError(f"{PARAMS_ENV} must be at least {NUM_ARRAYS}, got {num_params}")
        return make_model(num_params, seed)

    def site(self, data: str, device: str, seed: int) -> BenchSite:
        try:
            return BenchSite(int(data))
        except ValueError:
            raise TaskError(f"bench task: --data must be a partition id, got {data!r}") from None


TASK = BenchTask()
