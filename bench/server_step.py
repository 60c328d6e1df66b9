"""The server's step alone: a round's new model computed from the current model's file and the
round's float64 sum, hashed and written to a staged checkpoint (`write_model` over
`strategy_step`), timed warm in one process with the server's allocator settings.

    python -m bench.server_step --params 250000000 --strategies fedavg,fedadam --reps 3

Prints each step's wall and CPU seconds (CPU of every thread) and the new model's digest, which
is the same for every repetition of a stateless strategy. Above P = 20M run it under the shared
lock (`flock /tmp/bench.lock ...`): at P = 250M it holds a 1 GB model file, a 2 GB sum and, for
FedAdam, 4 GB of moments. Its files go to bench/work/server_step_P<P> and are removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np

from bench.common import WORK_DIR
from quorum import heap
from quorum.aggregation import make_strategy
from quorum.aggregation.accumulator import Accumulator
from quorum.server.checkpoints import Checkpoints
from quorum.server.model_files import strategy_step, write_model
from quorum.wire import blobs
from quorum.wire.blobfiles import BlobWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, default=50_000_000)
    ap.add_argument("--strategies", default="fedavg", help="comma-separated strategy names")
    ap.add_argument("--reps", type=int, default=3, help="steps per strategy")
    args = ap.parse_args()
    heap.return_large_blocks()  # as every `quorum` process does
    heap.no_huge_pages()
    work = WORK_DIR / f"server_step_P{args.params}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        with BlobWriter(work / "model.safetensors") as writer:
            values = np.random.default_rng(0).normal(0, 1, args.params).astype(np.float32)
            blobs.write({"w": values}, writer)
            model = writer.finish()
        total = Accumulator(args.params)  # two sites' updates: the model and a constant
        total.fold(values, 2.0)
        total.fold(np.full(args.params, 0.5, np.float32), 1.0)
        del values
        checkpoints = Checkpoints(work / "checkpoints")
        for name in args.strategies.split(","):
            strategy = make_strategy(name)
            walls, cpus = [], []
            for _ in range(args.reps):
                wall, cpu = time.perf_counter(), time.process_time()
                new = write_model(
                    checkpoints, "run", 1, model, strategy_step(strategy, model, total)
                )
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
                print(f"{name}: {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU, {new.digest}")
                del new
            print(
                f"{name}: median {statistics.median(walls):.2f} s wall, "
                f"{statistics.median(cpus):.2f} s CPU over {args.reps} steps"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
