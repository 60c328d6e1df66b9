"""Megatron-core tensor parallelism, with data parallelism over the remaining ranks.

`MegatronLinears` is the `LinearFactory` of `quorum.baseline.gpt` that builds Megatron-core's
`ColumnParallelLinear` (`gather_output=False`: QKV and the first MLP layer) and
`RowParallelLinear` (`input_is_parallel=True`: attention output, second MLP layer), each
returning a tensor instead of Megatron's `(output, bias)`. The world is split by
`parallel_state.initialize_model_parallel(tensor_model_parallel_size=T)`: consecutive ranks form
a tensor-parallel group and the W/T groups are data-parallel replicas, whose gradients torch's
DDP averages over Megatron's data-parallel group (`nproc` must be a multiple of T; the spec
checks it). Pipeline parallelism is not used.

Weights: every rank builds the dense model from the seed on CPU and copies its slice of each
split parameter into the parallel model (rows of a column layer's weight, columns of a row
layer's, by Megatron's `partition_dim` attribute), so a tensor-parallel job starts from exactly
the weights a DDP or DeepSpeed job of the same seed starts from. The parallel layers are built
with `ModelParallelConfig(use_cpu_initialization=True)` and an init method that leaves the
weights as they are (they are overwritten), so no CUDA generator is needed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from torch import Tensor, nn

from quorum.baseline.engines import Setup
from quorum.baseline.engines.ddp import DDPTrainer
from quorum.baseline.gpt import DenseLinears
from quorum.errors import ConfigError


class _Column(ColumnParallelLinear):  # type: ignore[misc]
    def forward(self, x: Tensor) -> Tensor:
        output, _ = super().forward(x)
        out: Tensor = output
        return out


class _Row(RowParallelLinear):  # type: ignore[misc]
    def forward(self, x: Tensor) -> Tensor:
        output, _ = super().forward(x)
        out: Tensor = output
        return out


def _init_noop(weight: Tensor) -> None:
    """Megatron requires an init method; the weights are copied from the dense model."""


class MegatronLinears:
    """`LinearFactory` of Megatron-core's parallel linears over the current tensor-parallel
    group (see the module docstring)."""

    def __init__(self, tensor_parallel: int) -> None:
        self.parallel_size = tensor_parallel
        self.config = ModelParallelConfig(
            tensor_model_parallel_size=tensor_parallel,
            use_cpu_initialization=True,
        )

    def column(
        self, in_features: int, out_features: int, *, bias: bool, init_std: float
    ) -> nn.Module:
        return _Column(
            in_features,
            out_features,
            config=self.config,
            init_method=_init_noop,
            bias=bias,
            gather_output=False,
        )

    def row(self, in_features: int, out_features: int, *, bias: bool, init_std: float) -> nn.Module:
        return _Row(
            in_features,
            out_features,
            config=self.config,
            init_method=_init_noop,
            bias=bias,
            input_is_parallel=True,
            skip_bias_add=False,
        )


def shard_from_dense(parallel: nn.Module, dense: nn.Module, tp_rank: int, tp_size: int) -> None:
    """Copies `dense`'s weights into `parallel` (the split of `quorum.baseline.gpt`'s docstring):
    a column layer takes rows `[r*out/P, (r+1)*out/P)` of its weight and bias, a row layer
    columns `[r*in/P, (r+1)*in/P)` of its weight and its whole bias; everything else is copied
    whole. Names match because the wrappers keep nn.Linear's `weight` and `bias`."""
    split_dims: dict[str, int | None] = {}
    for prefix, module in parallel.named_modules():
        if isinstance(module, _Column):
            split_dims[f"{prefix}.weight"] = split_dims[f"{prefix}.bias"] = 0
        elif isinstance(module, _Row):
            split_dims[f"{prefix}.weight"] = 1
    source = dict(dense.named_parameters())
    with torch.no_grad():
        for name, param in parallel.named_parameters():
            if name not in source:
                raise ConfigError(f"the parallel model has {name!r}, which the dense one lacks")
            whole: Tensor = source[name]
            dim = split_dims.get(name)
            if dim is not None:
                whole = whole.chunk(tp_size, dim=dim)[tp_rank]
            if whole.shape != param.shape:
                raise ConfigError(
                    f"{name}: the dense slice is {tuple(whole.shape)}, the parallel parameter "
                    f"{tuple(param.shape)}"
                )
            param.copy_(whole)


class MegatronTrainer(DDPTrainer):
    def __init__(self, setup: Setup) -> None:
        tp = setup.spec.tensor_parallel
        world = dist.get_world_size()
        if world % tp:
            raise ConfigError(f"tensor_parallel ({tp}) must divide the world size ({world})")
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        seed = setup.spec.seed
        dense = setup.task.build_model(seed, DenseLinears())
        module = setup.task.build_model(seed, MegatronLinears(tp))
        shard_from_dense(module, dense, tp_rank, tp)
        del dense
        self._wrap(
            setup,
            module,
            int(parallel_state.get_data_parallel_rank()),
            int(parallel_state.get_data_parallel_world_size()),
            parallel_state.get_data_parallel_group(),
        )
