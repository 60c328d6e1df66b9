"""The sites of `quorum sim` over examples/mnist/sim.toml, built the way its site hosts build
them (quorum/sim/plan.py and host.py): one Dirichlet split of the task's examples, then
`task.site_of(data, part, device, run seed)` for a node's part."""

from __future__ import annotations

import functools
import sys

import numpy as np

# The repository root is on PYTHONPATH (bench/common.child_env). Opacus installs a top-level
# `examples` package of its own in site-packages; should anything have put site-packages ahead
# of the checkout, the import below would take opacus's, so it is checked.
from examples.mnist import task as mnist_task
from quorum.sim import partition
from quorum.torch_task import TorchTask

if not mnist_task.__file__ or "site-packages" in mnist_task.__file__:
    sys.exit(f"examples.mnist.task resolved to {mnist_task.__file__}, not the checkout's")

DEVICE = "cpu"
"""examples/mnist/sim.toml's [site] device."""


@functools.cache
def parts(num_sites: int, seed: int, alpha: float) -> list[np.ndarray]:
    """The partition `quorum sim` draws (its `[sim.partition] seed` defaults to the run's)."""
    labels = mnist_task.task.examples(mnist_task.DATA).labels
    return partition.split("dirichlet", labels, num_sites, seed, alpha=alpha)


@functools.cache
def site(
    partition_id: int, num_sites: int, seed: int, partition_seed: int, alpha: float
) -> TorchTask:
    """A node's site, built once per process and kept, as a Quorum host keeps its built sites:
    every fit loads the global model and makes a fresh optimiser, so a kept site trains exactly
    as a new one would."""
    indices = parts(num_sites, partition_seed, alpha)[partition_id]
    return mnist_task.task.site_of(mnist_task.DATA, indices, DEVICE, seed)
