"""Shared helpers: deterministic model and perturbation (bench/tasks.py mirrors these)."""

from __future__ import annotations

import numpy as np


def make_model(num_params: int, num_arrays: int) -> list[np.ndarray]:
    """List of float32 arrays totalling exactly num_params parameters."""
    rng = np.random.default_rng(0)
    base = num_params // num_arrays
    sizes = [base] * num_arrays
    sizes[-1] += num_params - base * num_arrays
    return [(rng.standard_normal(s, dtype=np.float32) * 0.01) for s in sizes]


def perturb(arrays: list[np.ndarray], partition_id: int, server_round: int) -> list[np.ndarray]:
    """Trivial 'local training': add a small deterministic constant."""
    delta = np.float32(1e-4 * (partition_id + 1) * (1 + server_round % 3))
    return [a + delta for a in arrays]
