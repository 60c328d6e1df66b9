"""The GPT baseline on one GPU: plain torch and single-rank DeepSpeed, tokens/s and peak memory.

    python3 bench/gpu_baseline.py --json out.json [--steps 200] [--batch-size 64] [--device cuda]

For sessions with a GPU lent. It needs only torch, numpy and (for the DeepSpeed half)
deepspeed, plus this checkout: it imports `quorum.baseline.gpt` and `quorum.data.shakespeare`
(which need torch, numpy and `quorum.errors`) without running `quorum/__init__.py` (which imports
safetensors and the task API), by registering `quorum` as a bare package. DeepSpeed runs as a
world of one rank: the process group is gloo on 127.0.0.1 (no NCCL needed), the optimiser
torch's Adam (`torch_adam`, no compiled ops), fp32, ZeRO stage `--zero-stage` (0 by default;
with one rank there is nothing to shard). Both runs train the default GPT (812,416 parameters)
on Tiny Shakespeare (nanoGPT's split) from the same seed and batches; the first `--warmup` steps
are not timed. DeepSpeed itself imports pydantic, hjson, py-cpuinfo, msgpack, einops, tqdm, psutil
and packaging: on a machine without them, put a folder holding them (built for its Python) on
PYTHONPATH, and set DS_ACCELERATOR=cuda. Measured on an H200 (torch 2.11, deepspeed 0.19.8, 300
steps, batch 64 x 64 tokens): plain torch 556k-686k tokens/s, DeepSpeed stage 0 413k tokens/s,
both 212 MiB peak. Peak memory is `torch.cuda.max_memory_allocated` on CUDA and the process's peak
RSS on CPU (which, for the second run, includes the first).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import time
import types
from typing import Any

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
if "quorum" not in sys.modules:  # a bare package: skip quorum/__init__.py and its imports
    _package = types.ModuleType("quorum")
    _package.__path__ = [str(REPO / "quorum")]
    sys.modules["quorum"] = _package

from quorum.baseline.gpt import GPT, GPTConfig, next_token_loss  # noqa: E402
from quorum.data import shakespeare  # noqa: E402
from quorum.ports import free_port  # noqa: E402


def batches(config: GPTConfig, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    text = shakespeare.read_text()
    train, _ = shakespeare.train_validation(text)
    ids = shakespeare.vocabulary(text).encode(train)
    inputs, targets = shakespeare.windows(ids, config.block_size, None)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        pick = rng.integers(0, len(inputs), batch_size)
        out.append(torch.from_numpy(np.stack([inputs[pick], targets[pick]])))
    return out


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def timed(
    step: Any, data: list[torch.Tensor], device: torch.device, warmup: int, tokens: int
) -> dict[str, Any]:
    losses = []
    for i, pair in enumerate(data):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        pair = pair.to(device, non_blocking=True)
        losses.append(step(pair[0], pair[1]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    timed_steps = len(data) - warmup
    return {
        "steps_timed": timed_steps,
        "step_time_s": elapsed / timed_steps,
        "tokens_per_s": timed_steps * tokens / elapsed,
        "first_loss": float(losses[0]),
        "final_loss": float(losses[-1]),
        "peak_memory_bytes": peak_memory(device),
    }


def run_torch(config: GPTConfig, data: list[torch.Tensor], args: argparse.Namespace) -> Any:
    device = torch.device(args.device)
    model = GPT(config, seed=args.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = next_token_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return timed(step, data, device, args.warmup, args.batch_size * config.block_size)


def run_deepspeed(config: GPTConfig, data: list[torch.Tensor], args: argparse.Namespace) -> Any:
    import deepspeed
    import torch.distributed as dist

    device = torch.device(args.device)
    port = free_port()
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend="gloo", dist_init_required=False)
    model = GPT(config, seed=args.seed).to(device)
    ds_config = {
        "train_batch_size": args.batch_size,
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 by default; plain torch does not
        "optimizer": {
            "type": "Adam",
            "params": {"lr": args.lr, "torch_adam": True, "adam_w_mode": False},
        },
        "zero_optimization": {"stage": args.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=list(model.parameters()), config=ds_config
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = next_token_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        return loss.detach()

    result = timed(step, data, device, args.warmup, args.batch_size * config.block_size)
    result["deepspeed_version"] = deepspeed.__version__
    result["zero_stage"] = args.zero_stage
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    args.warmup = min(args.warmup, max(args.steps - 1, 0))
    config = GPTConfig()
    data = batches(config, args.batch_size, args.steps, args.seed)
    report: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "batch_size": args.batch_size,
        "block_size": config.block_size,
        "steps": args.steps,
        "results": {},
    }
    for name, run in (("torch", run_torch), ("deepspeed", run_deepspeed)):
        try:
            report["results"][name] = run(config, data, args)
        except Exception as exc:  # report what failed and go on (e.g. deepspeed not installed)
            report["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(report["results"][name]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
