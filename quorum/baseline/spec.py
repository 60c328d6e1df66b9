"""What a centralised baseline job is: the settings `quorum baseline run` and
`POST /api/v1/baselines` share (DESIGN.md section 12).

A `BaselineSpec` is validated once, where it enters (CLI flags, an API body), and travels to the
ranks as `spec.json` in the job's folder (`quorum.baseline.launcher`). The rules that need no task
are checked here, so a bad job is refused before any process starts:

- `zero_stage` and `offload` are DeepSpeed settings; `tensor_parallel` is Megatron's. Setting one
  for another engine is an error rather than silently ignored, because a baseline that was meant
  to be sharded and was not would report the wrong memory.
- `offload="cpu"` moves the optimiser state to host memory, which DeepSpeed supports from ZeRO
  stage 1 on.
- `tensor_parallel` divides `nproc`; the ranks left over form the data-parallel groups, and the
  global `batch_size` divides over those. Whether it divides the model's heads is the task's
  business (the worker checks it when it builds the model).
- Exactly one of `steps` and `epochs` bounds the training; with neither, `steps` is 200.
- `batch_size` and `learning_rate` left unset take the task's defaults.
- `torchrun_args` are passed to torchrun as they are (`--nnodes`, `--node-rank`, `--rdzv-*`,
  `--master-addr`...), except the flags this model owns (`--nproc-per-node`, `--standalone`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quorum.errors import ConfigError

Engine = Literal["ddp", "deepspeed", "megatron"]
DEFAULT_STEPS = 200
_TASK_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_OWNED_TORCHRUN_FLAGS = ("--nproc-per-node", "--nproc_per_node", "--standalone")


HEADLINE_METRICS = (
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    "samples_per_s",
    "tokens_per_s",
    "wall_s",
)
"""The result fields a run's page shows of each baseline of its task (with every number of
the task's own `eval_metrics`)."""


class BaselineSpec(BaseModel):
    """One centralised training job. See the module docstring for the rules between fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(description="the task as 'module:attribute' (a CentralisedTask)")
    data: str = Field("pooled", description="which data the task trains on (task-defined)")
    engine: Engine = "ddp"
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage")
    offload: Literal["none", "cpu"] = Field(
        "none", description="DeepSpeed: keep the optimiser state in host memory"
    )
    tensor_parallel: int = Field(1, ge=1, description="Megatron: ranks per tensor-parallel group")
    nproc: int = Field(1, ge=1, description="ranks per node (torchrun --nproc-per-node)")
    steps: int | None = Field(None, ge=1, description="optimiser steps (default 200)")
    epochs: float | None = Field(None, gt=0, description="passes over the training set")
    batch_size: int | None = Field(
        None, ge=1, description="global batch (samples per step over all data-parallel ranks)"
    )
    learning_rate: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, ge=1, description="steps between progress lines")
    torchrun_args: list[str] = Field(
        default_factory=list, description="passed to torchrun as is (--nnodes, --rdzv-*)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_steps(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("steps") is None and data.get("epochs") is None:
            return {**data, "steps": DEFAULT_STEPS}
        return data

    @model_validator(mode="after")
    def _check(self) -> BaselineSpec:
        if not _TASK_REF.match(self.task):
            raise ValueError(f"task must be 'module:attribute', got {self.task!r}")
        if self.engine != "deepspeed":
            if self.zero_stage:
                raise ValueError(
                    f"zero_stage is a DeepSpeed setting; use engine='deepspeed' (got engine="
                    f"{self.engine!r}, zero_stage={self.zero_stage})"
                )
            if self.offload != "none":
                raise ValueError(
                    f"offload is a DeepSpeed setting; use engine='deepspeed' (got engine="
                    f"{self.engine!r})"
                )
        elif self.offload == "cpu" and self.zero_stage == 0:
            raise ValueError(
                "offload='cpu' needs ZeRO stage 1, 2 or 3 (DeepSpeed has no stage-0 offload)"
            )
        if self.tensor_parallel > 1 and self.engine != "megatron":
            raise ValueError(
                f"tensor_parallel is a Megatron setting; use engine='megatron' (got engine="
                f"{self.engine!r}, tensor_parallel={self.tensor_parallel})"
            )
        if self.nproc % self.tensor_parallel:
            raise ValueError(
                f"tensor_parallel ({self.tensor_parallel}) must divide nproc ({self.nproc})"
            )
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.batch_size is not None and self.batch_size % self.data_parallel_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of the data-parallel size "
                f"({self.data_parallel_size} = nproc {self.nproc} / tensor_parallel "
                f"{self.tensor_parallel})"
            )
        for arg in self.torchrun_args:
            if arg.split("=", 1)[0] in _OWNED_TORCHRUN_FLAGS:
                raise ValueError(f"torchrun_args must not set {arg!r}: use nproc")
        return self

    @property
    def data_parallel_size(self) -> int:
        """Data-parallel ranks per node: `nproc / tensor_parallel` (times `--nnodes` in a
        multi-node job, which only the ranks know; they read the world size from torchrun)."""
        return self.nproc // self.tensor_parallel


def parse_spec(data: Mapping[str, Any]) -> BaselineSpec:
    """`BaselineSpec` from a mapping (an API body, a spec.json), with pydantic's errors turned
    into one ConfigError naming each bad field."""
    try:
        return BaselineSpec.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid baseline spec: {problems}") from None
