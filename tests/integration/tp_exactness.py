"""Run under torchrun with 2 ranks: the tiny GPT with Megatron-core TP=2 against the same model
in one process, same initial weights (sharded from the dense model) and the same batch; rank 0
writes the largest differences as JSON to argv[1]. Used by test_baseline_engines.py."""

from __future__ import annotations

import json
import pathlib
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from quorum.baseline.engines.megatron_engine import MegatronLinears, shard_from_dense
from quorum.baseline.gpt import GPT, next_token_loss
from quorum.baseline.worker import exit_now
from tests.baseline_tasks import TINY

STEPS = 3


def main() -> None:
    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    rank = parallel_state.get_tensor_model_parallel_rank()
    dense = GPT(TINY, seed=7)
    parallel = GPT(TINY, MegatronLinears(2), seed=7)
    shard_from_dense(parallel, dense, rank, 2)
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randint(0, TINY.vocab_size, (4, TINY.block_size), generator=generator)
    targets = torch.randint(0, TINY.vocab_size, (4, TINY.block_size), generator=generator)
    forward_diff = float((parallel(inputs) - dense(inputs)).abs().max())
    losses = []
    for model in (dense, parallel):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(STEPS):
            optimizer.zero_grad()
            next_token_loss(model(inputs), targets).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        with torch.no_grad():
            losses.append(float(next_token_loss(model(inputs), targets)))
    after_diff = float((parallel(inputs) - dense(inputs)).abs().max())
    if dist.get_rank() == 0:
        result = {
            "forward_max_abs_diff": forward_diff,
            "loss_dense": losses[0],
            "loss_tp": losses[1],
            "loss_abs_diff": abs(losses[0] - losses[1]),
            "logits_max_abs_diff_after_steps": after_diff,
        }
        pathlib.Path(sys.argv[1]).write_text(json.dumps(result))
    dist.destroy_process_group()
    exit_now(0)  # not the interpreter's teardown, for the worker's reason (see exit_now)


if __name__ == "__main__":
    main()
