"""Plain data parallelism: torch's DistributedDataParallel (gloo on CPU, NCCL on CUDA).

Every rank holds the whole model, its gradients and the whole Adam state (16 bytes per fp32
parameter); gradients are views of DDP's all-reduce buckets (`gradient_as_bucket_view`), so they
are not held twice. With one rank the model is used as it is.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from quorum.baseline.engines import Setup
from quorum.baseline.gpt import DenseLinears
from quorum.baseline.memory import state_bytes


def adam(model: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """The optimiser of every engine: torch's Adam (no weight decay), so that the engines'
    curves compare step for step."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate)


class DDPTrainer:
    def __init__(self, setup: Setup) -> None:
        module = setup.task.build_model(setup.spec.seed, DenseLinears())
        self._wrap(setup, module, dist.get_rank(), dist.get_world_size(), None)

    def _wrap(
        self,
        setup: Setup,
        module: nn.Module,
        dp_rank: int,
        dp_size: int,
        group: dist.ProcessGroup | None,
    ) -> None:
        """Trains `module` data-parallel over `group` (all ranks: None) of `dp_size` ranks."""
        self.setup = setup
        self._module = module.to(setup.device)
        self._dp_rank, self._dp_size = dp_rank, dp_size
        self._wrapped: nn.Module = self._module
        if dp_size > 1:
            device_ids = [setup.device] if setup.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(
                self._module,
                device_ids=device_ids,
                process_group=group,
                gradient_as_bucket_view=True,
            )
        self.optimizer = adam(self._module, setup.learning_rate)
        self.measured_state_bytes = 0

    @property
    def dp_rank(self) -> int:
        return self._dp_rank

    @property
    def dp_size(self) -> int:
        return self._dp_size

    @property
    def model(self) -> nn.Module:
        return self._module

    def train_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, measure: bool = False
    ) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.setup.task.loss(self._wrapped(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        if measure:
            self.measured_state_bytes = state_bytes(self._module, self.optimizer)
        self.optimizer.step()
        return loss.detach()
