"""DeepSpeed ZeRO stages 0-3 in fp32, optionally with the optimiser state in host memory.

The optimiser is DeepSpeed's "Adam" with `torch_adam: true` and `adam_w_mode: false`, which is
`torch.optim.Adam` run by DeepSpeed on the partition each rank owns: FusedAdam and
DeepSpeedCPUAdam are compiled ops that a `DS_BUILD_OPS=0` install builds on first use (which
needs a compiler and, for FusedAdam, CUDA), while torch's Adam runs anywhere and makes the ZeRO
curves comparable step for step with the DDP engine. With `offload="cpu"` DeepSpeed would insist
on DeepSpeedCPUAdam; `zero_force_ds_cpu_optimizer: false` lets torch's Adam step the offloaded
fp32 partition instead (slower than the compiled op on a real offload, identical in result).

Every parameter is partitioned at stage 3 (`stage3_param_persistence_threshold: 0`; DeepSpeed's
default keeps parameters under 100k elements whole on every rank, which for a small GPT is most
of them and would hide the stage's saving). What each stage holds, per fp32 parameter and K
ranks, as measured by `quorum.baseline.memory.state_bytes` (see `bench/zero_memory.py`):

- stage 0: 4 parameter + 4 gradient + 8 Adam (exp_avg, exp_avg_sq) = 16 bytes.
- stage 1: the model's parameters whole (4, in one flat buffer) and, for its 1/K partition,
  an fp32 master copy (4/K), the averaged gradient (4/K) and Adam (8/K): 4 + 16/K. DeepSpeed
  keeps the master copy even in fp32 (the paper's accounting carried over to fp32 has none:
  8 + 8/K), and with one micro-step per step its stage 1 reduces the full gradients into the
  partition by the end of backward, as stage 2 does, so the two hold the same; they differ
  under gradient accumulation, where stage 1 keeps whole gradients between micro-steps.
- stage 2: the same, 4 + 16/K (the paper's fp32 analogue: 4 + 12/K, again without the master).
- stage 3: everything partitioned: the model parameter (4/K), master (4/K), gradient (4/K) and
  Adam (8/K) = 20/K (paper: 16/K).

Measured for the default GPT (Ψ = 812,416) on K = 2 CPU ranks (`bench/zero_memory.py`), bytes
per parameter on ranks 0 and 1: stage 0 16.00/16.00, stage 1 12.02/12.30, stage 2 12.02/12.30,
stage 3 10.00/10.00 (the last partition carries DeepSpeed's alignment padding).

DeepSpeed clips the global gradient norm to 1.0 unless the config says otherwise (its
`gradient_clipping` defaults to 1.0), which the DDP engine does not do; the config turns it off
(`gradient_clipping: 0.0`). With DeepSpeed's default the curves were identical for two steps
and then drifted from DDP's (1.9% of the loss by step 50 on the tiny GPT): the first Adam update
is sign-like and ignores a clip's scale, the second is the first to weigh a clipped gradient
against an unclipped one. Without it, stages 0 and 3 on 2 CPU ranks give DDP's losses bit for
bit over 50 steps (`tests/integration/test_baseline_engines.py` checks within 1e-5), and so
did stage 0 on 1 rank when measured by hand.
"""

from __future__ import annotations

import logging
from typing import Any

import deepspeed
import torch.distributed as dist
from torch import Tensor, nn

from quorum.baseline.engines import Setup
from quorum.baseline.gpt import DenseLinears
from quorum.baseline.memory import state_bytes

DEFAULT_BUCKET = 500_000_000


def ds_config(setup: Setup, dp_size: int, num_parameters: int) -> dict[str, Any]:
    """The DeepSpeed config of the job (see the module docstring). The communication buckets
    are bounded by the model's size: DeepSpeed's default (5e8 elements) would allocate 2 GB per
    rank for a model of a million parameters."""
    spec = setup.spec
    bucket = max(1, min(DEFAULT_BUCKET, num_parameters))
    zero: dict[str, Any] = {
        "stage": spec.zero_stage,
        "reduce_bucket_size": bucket,
        "allgather_bucket_size": bucket,
    }
    if spec.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
        zero["stage3_prefetch_bucket_size"] = bucket
    if spec.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_batch_size": setup.batch_size,
        "train_micro_batch_size_per_gpu": setup.batch_size // dp_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,  # DeepSpeed's default is 1.0; DDP does not clip
        "optimizer": {
            "type": "Adam",
            "params": {
                "lr": setup.learning_rate,
                "torch_adam": True,
                "adam_w_mode": False,
                "weight_decay": 0.0,
            },
        },
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedTrainer:
    def __init__(self, setup: Setup) -> None:
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.setup = setup
        deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
        self._dp_size = dist.get_world_size()
        self._dp_rank = dist.get_rank()
        module = setup.task.build_model(setup.spec.seed, DenseLinears()).to(setup.device)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=module,
            model_parameters=list(module.parameters()),
            config=ds_config(setup, self._dp_size, sum(p.numel() for p in module.parameters())),
            dist_init_required=False,
        )
        self.engine = engine
        self.optimizer = optimizer
        self.measured_state_bytes = 0

    @property
    def dp_rank(self) -> int:
        return self._dp_rank

    @property
    def dp_size(self) -> int:
        return self._dp_size

    @property
    def model(self) -> nn.Module:
        engine: nn.Module = self.engine
        return engine

    def train_step(self, inputs: Tensor, targets: Tensor, measure: bool = False) -> Tensor:
        loss = self.setup.task.loss(self.engine(inputs), targets)
        self.engine.backward(loss)
        if measure:
            self.measured_state_bytes = state_bytes(self.engine, self.optimizer)
        self.engine.step()
        return loss.detach()
