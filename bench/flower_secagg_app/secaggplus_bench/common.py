"""The workload (bench/tasks.py and bench/flower_app compute the same values)."""

from __future__ import annotations

import numpy as np


def make_model(num_params: int, num_arrays: int) -> list[np.ndarray]:
    """`num_arrays` float32 arrays, P values in all, N(0, 0.01²) from rng seed 0; the last array
    takes the remainder."""
    rng = np.random.default_rng(0)
    sizes = [num_params // num_arrays] * num_arrays
    sizes[-1] += num_params - sum(sizes)
    return [rng.standard_normal(size, dtype=np.float32) * np.float32(0.01) for size in sizes]


def perturb(arrays: list[np.ndarray], partition_id: int, server_round: int) -> list[np.ndarray]:
    """Trivial local training: add a constant that depends on the site and the round."""
    step = np.float32(1e-4 * (partition_id + 1) * (1 + server_round % 3))
    return [array + step for array in arrays]
