"""What a task gives the baseline worker so that it can be trained centralised (pooled).

A federated task (`quorum.task.FederatedTask`) hands each site a ready-made `SiteTask`; a
centralised baseline instead needs the pieces, because the engine (DDP, DeepSpeed, Megatron) owns
the model wrapper, the optimiser and the data sharding. A `CentralisedTask` gives:

- `build_model(seed, linears)`: the same architecture the federation trains, its weights a pure
  function of `seed`; `linears` is the `LinearFactory` of `quorum.baseline.gpt` so that Megatron
  can replace the dense linears by parallel ones. A model without such linears refuses a factory
  whose `parallel_size` is above 1 (`refuse_tensor_parallel`).
- `train_dataset(data)` / `eval_dataset(data)`: map-style datasets of `(input, target)` pairs for
  the named data (`"pooled"` is the union of the sites, the federation's centralised reference).
- `loss(outputs, targets)`: the mean loss of a batch (the federation's loss function).
- `eval_metrics(model, dataset, device)`: at least `loss` and `accuracy` over the whole dataset
  (more keys are reported as they are). Every rank calls it together, because a sharded model's
  forward is collective.
- `tokens_per_sample`: target tokens per sample for language models (throughput in tokens/s),
  None otherwise; `default_batch_size` and `default_learning_rate` for a spec that sets neither.

The worker trains every task with Adam (the optimiser of the federation's baselines).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from quorum.baseline.gpt import LinearFactory
from quorum.errors import ConfigError, TaskError
from quorum.task import import_ref

Sample = tuple[torch.Tensor, ...]
"""An (input, target) pair; `TensorDataset`'s item type."""


@runtime_checkable
class CentralisedTask(Protocol):
    """See the module docstring."""

    @property
    def tokens_per_sample(self) -> int | None: ...

    @property
    def default_batch_size(self) -> int: ...

    @property
    def default_learning_rate(self) -> float: ...

    def build_model(self, seed: int, linears: LinearFactory) -> nn.Module: ...

    def train_dataset(self, data: str) -> Dataset[Sample]: ...

    def eval_dataset(self, data: str) -> Dataset[Sample]: ...

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def eval_metrics(
        self, model: nn.Module, dataset: Dataset[Sample], device: torch.device
    ) -> dict[str, float]: ...


def load_centralised_task(ref: str) -> CentralisedTask:
    """Imports `module:attribute` (an operator-given name; the working directory first, as
    `quorum.task.load_task` does) and checks that it is a CentralisedTask."""
    task = import_ref(ref)
    if not isinstance(task, CentralisedTask):
        raise TaskError(
            f"task {ref!r} cannot train centralised: it needs build_model(seed, linears), "
            "train_dataset(data), eval_dataset(data), loss(outputs, targets), "
            "eval_metrics(model, dataset, device), tokens_per_sample, default_batch_size and "
            "default_learning_rate (quorum.baseline.task.CentralisedTask)"
        )
    return task


def refuse_tensor_parallel(linears: LinearFactory, what: str) -> None:
    """For models without column/row linears: a clear error instead of a silently whole model."""
    if linears.parallel_size > 1:
        raise ConfigError(
            f"{what} has no layers that tensor parallelism can split; use tensor_parallel=1 "
            "(engine ddp or deepspeed)"
        )


def evaluate(
    model: nn.Module,
    dataset: Dataset[Sample],
    device: torch.device,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    correct: Callable[[torch.Tensor, torch.Tensor], tuple[int, int]],
    batch_size: int,
) -> dict[str, float]:
    """`loss` and `accuracy` of `model` over `dataset` in order, without gradients: the loss is
    the mean over the units `correct` counts (tokens for a language model, samples otherwise),
    each batch's mean loss weighted by its units; `correct(outputs, targets)` returns (right,
    counted). The model is put in eval mode and back in train mode afterwards."""
    loader: DataLoader[Sample] = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total_loss, right, counted = 0.0, 0, 0
    model.eval()
    try:
        with torch.no_grad():
            for inputs, targets in loader:
                outputs = model(inputs.to(device))
                targets = targets.to(device)
                batch_right, batch_counted = correct(outputs, targets)
                total_loss += float(loss_fn(outputs, targets)) * batch_counted
                right += batch_right
                counted += batch_counted
    finally:
        model.train()
    if counted == 0:
        raise TaskError("the evaluation set is empty")
    return {"loss": total_loss / counted, "accuracy": right / counted}
