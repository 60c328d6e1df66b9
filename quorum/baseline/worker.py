"""One rank of a baseline job: `python -m quorum.baseline.worker --spec SPEC --out DIR`, started
by torchrun (`quorum.baseline.launcher`), which sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous.

The rank joins the default process group (gloo on CPU, NCCL on CUDA), builds its engine's
`Trainer`, and trains `steps` optimiser steps. Global batches are drawn the same way whatever the
engine and the number of ranks: each epoch is a permutation of the training set drawn from
`(seed, epoch)`, cut into consecutive global batches of `batch_size` (an incomplete last batch is
dropped), and data-parallel rank r of D takes the r-th of D equal slices. Every rank's loss is
the mean over its slice, so the averaged gradient, and the logged loss (the mean over the
ranks), are those of the whole global batch: a DDP job on 1 rank and a ZeRO-3 job on 2 ranks
follow the same trajectory up to floating-point order.

Rank 0 writes the files of the contract in `quorum.baseline.launcher`. Any failure is raised
(torchrun reports it and stops the other ranks), so the job exits non-zero; a rank that succeeds
ends through `exit_now`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import IO, Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, TensorDataset, default_collate

from quorum.atomic import write_atomic
from quorum.baseline.engines import Setup, build_trainer
from quorum.baseline.launcher import ERROR_PREFIX, PROGRESS_FILE, RESULT_FILE
from quorum.baseline.memory import peak_memory_bytes
from quorum.baseline.spec import BaselineSpec, parse_spec
from quorum.baseline.task import Sample, load_centralised_task
from quorum.errors import ConfigError


def resolve_device(spec: BaselineSpec) -> torch.device:
    """This rank's device: `cuda:LOCAL_RANK` for cuda (or auto with CUDA present), else cpu."""
    want = spec.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def total_steps(spec: BaselineSpec, train_size: int, batch_size: int) -> int:
    """`spec.steps`, or `epochs` times the whole global batches of one epoch (at least 1)."""
    if batch_size > train_size:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the training set ({train_size} samples)"
        )
    if spec.steps is not None:
        return spec.steps
    assert spec.epochs is not None  # the spec holds one of them
    return max(1, math.ceil(spec.epochs * (train_size // batch_size)))


def global_batches(size: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of the global batches, epoch after epoch (see the module docstring)."""
    per_epoch = size // batch_size
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(size)
        for b in range(per_epoch):
            yield order[b * batch_size : (b + 1) * batch_size]
        epoch += 1


def take(dataset: Dataset[Sample], indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, targets) of `indices`, stacked."""
    if isinstance(dataset, TensorDataset):
        index = torch.from_numpy(indices)
        inputs, targets = dataset.tensors[0][index], dataset.tensors[1][index]
    else:
        inputs, targets = default_collate([dataset[int(i)] for i in indices])
    return inputs, targets


def run(spec: BaselineSpec, out_dir: pathlib.Path) -> dict[str, Any] | None:
    """Trains and evaluates; returns the result (rank 0) or None (other ranks)."""
    started = time.perf_counter()
    device = resolve_device(spec)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(spec.seed)
    task = load_centralised_task(spec.task)
    train_set = task.train_dataset(spec.data)
    batch_size = spec.batch_size or task.default_batch_size
    learning_rate = spec.learning_rate or task.default_learning_rate
    trainer = build_trainer(Setup(spec, task, device, learning_rate, batch_size))
    if batch_size % trainer.dp_size:
        raise ConfigError(
            f"batch_size {batch_size} must be a multiple of the data-parallel size "
            f"{trainer.dp_size}"
        )
    steps = total_steps(spec, len(train_set), batch_size)  # type: ignore[arg-type]
    local = batch_size // trainer.dp_size
    tokens = task.tokens_per_sample
    progress = (out_dir / PROGRESS_FILE).open("a", encoding="utf-8") if rank == 0 else None
    batches = global_batches(len(train_set), batch_size, spec.seed)  # type: ignore[arg-type]
    train_loss = math.nan
    train_started = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            indices = next(batches)[trainer.dp_rank * local : (trainer.dp_rank + 1) * local]
            inputs, targets = take(train_set, indices)
            measure = step == steps  # Adam's state exists from the second step on
            loss = trainer.train_step(inputs.to(device), targets.to(device), measure)
            if step % spec.log_every == 0 or step == steps or step == 1:
                train_loss = _mean_over_ranks(loss, world)
                elapsed = time.perf_counter() - train_started
                _log(progress, step, steps, train_loss, elapsed, batch_size, tokens)
    finally:
        if progress is not None:
            progress.close()
    train_s = time.perf_counter() - train_started
    state = trainer.measured_state_bytes
    metrics = task.eval_metrics(trainer.model, task.eval_dataset(spec.data), device)
    peaks, states = _gather_ints([peak_memory_bytes(device), state], device, world)
    if rank != 0:
        return None
    samples_per_s = steps * batch_size / train_s
    result = {
        "engine": spec.engine,
        "zero_stage": spec.zero_stage,
        "offload": spec.offload,
        "tensor_parallel": spec.tensor_parallel,
        "nproc": spec.nproc,
        "world_size": world,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "train_loss": train_loss,
        "eval_loss": metrics.get("loss"),
        "eval_accuracy": metrics.get("accuracy"),
        "eval_metrics": metrics,
        "samples_per_s": samples_per_s,
        "tokens_per_s": None if tokens is None else samples_per_s * tokens,
        "step_time_s": train_s / steps,
        "peak_memory_bytes": peaks,
        "state_bytes": states,
        "device": device.type,
        "wall_s": time.perf_counter() - started,
    }
    write_atomic(out_dir / RESULT_FILE, json.dumps(result, indent=2).encode())
    return result


def _mean_over_ranks(loss: torch.Tensor, world: int) -> float:
    value = loss.detach().reshape(1).to(torch.float64)
    if world > 1:
        dist.all_reduce(value)
    return float(value) / world


def _gather_ints(values: list[int], device: torch.device, world: int) -> list[list[int]]:
    """Each value of every rank, in rank order: `[[v0 of rank 0, v0 of rank 1...], ...]`
    (an all_gather of tensors; `all_gather_object` would pickle)."""
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    if world == 1:
        return [[v] for v in values]
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    table = torch.stack(parts).cpu().tolist()
    return [[int(row[i]) for row in table] for i in range(len(values))]


def _log(
    progress: IO[str] | None,
    step: int,
    steps: int,
    loss: float,
    elapsed: float,
    batch_size: int,
    tokens: int | None,
) -> None:
    if progress is None:
        return
    samples_per_s = step * batch_size / elapsed if elapsed > 0 else 0.0
    record: dict[str, Any] = {
        "step": step,
        "steps": steps,
        "loss": loss,
        "elapsed_s": elapsed,
        "samples_per_s": samples_per_s,
    }
    if tokens is not None:
        record["tokens_per_s"] = samples_per_s * tokens
    progress.write(json.dumps(record) + "\n")
    progress.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quorum.baseline.worker")
    parser.add_argument("--spec", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    spec = parse_spec(json.loads(args.spec.read_text(encoding="utf-8")))
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        run(spec, args.out)
    except BaseException as exc:
        rank = os.environ.get("RANK", "0")
        message = "".join(traceback.format_exception_only(exc)).strip()
        write_atomic(args.out / f"{ERROR_PREFIX}{rank}.txt", message.encode())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def exit_now(status: int) -> NoReturn:
    """Ends the process with `status` without the interpreter's teardown, once the process
    group is destroyed and every file is written.

    Why: a gloo worker thread drops its references to a collective's tensors only after the
    caller has the result, and as the tensors have Python objects that drop takes the GIL. A rank
    that exits right after its last collective (every rank but 0, after `_gather_ints`) can be
    finalising the interpreter by then; the thread is ended inside a noexcept destructor and the
    process aborts ("terminate called without an active exception", SIGABRT, about one 2-rank
    job in 15). `destroy_process_group` does not stop gloo's threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
