"""The training engines of a baseline job: one `Trainer` per rank, whatever shards it.

- `ddp` (`quorum.baseline.engines.ddp`): the whole model and optimiser on every rank, gradients
  averaged by torch's DistributedDataParallel.
- `deepspeed` (`.deepspeed_engine`): DeepSpeed ZeRO stage 0-3, optionally with the optimiser
  state offloaded to host memory.
- `megatron` (`.megatron_engine`): Megatron-core tensor parallelism of the model's column/row
  linears, data parallel over the groups of ranks that hold a whole model.

A `Trainer` is built after the default process group exists. Each engine module is imported only
when its engine is asked for, so `ddp` needs nothing beyond torch; `require_llm_extra` says which
extra to install when DeepSpeed or Megatron-core is missing (`quorum.baseline.extra`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from quorum.baseline.extra import require_llm_extra
from quorum.baseline.spec import BaselineSpec
from quorum.baseline.task import CentralisedTask


@dataclass(frozen=True)
class Setup:
    """What every engine needs: the validated spec, the task, this rank's device, the optimiser
    step size and the global batch."""

    spec: BaselineSpec
    task: CentralisedTask
    device: torch.device
    learning_rate: float
    batch_size: int


class Trainer(Protocol):
    """One rank's view of the training: `dp_rank`/`dp_size` say which slice of each global batch
    it takes (ranks of one tensor-parallel group take the same slice); `model` is what
    evaluation calls (every rank together); `train_step` runs forward, backward and the
    optimiser step on this rank's slice and returns its mean loss (detached); with `measure`
    it sets `measured_state_bytes` (`quorum.baseline.memory.state_bytes`) between backward and
    the optimiser step, where a rank holds its gradients as well as its parameters and (after
    the first step) its optimiser state."""

    @property
    def dp_rank(self) -> int: ...

    @property
    def dp_size(self) -> int: ...

    @property
    def model(self) -> nn.Module: ...

    measured_state_bytes: int

    def train_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, measure: bool = False
    ) -> torch.Tensor: ...


def build_trainer(setup: Setup) -> Trainer:
    """The engine's trainer for this rank."""
    engine = setup.spec.engine
    require_llm_extra(engine)
    if engine == "deepspeed":
        from quorum.baseline.engines.deepspeed_engine import DeepSpeedTrainer

        return DeepSpeedTrainer(setup)
    if engine == "megatron":
        from quorum.baseline.engines.megatron_engine import MegatronTrainer

        return MegatronTrainer(setup)
    from quorum.baseline.engines.ddp import DDPTrainer

    return DDPTrainer(setup)
