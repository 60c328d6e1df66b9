"""DP-SGD training steps on a GPU through `TorchTask` and a `PrivacyLedger`, for when one is lent.

For each workload of bench/dp_workloads.py (the MNIST CNN, then the heart-disease model) it builds
the site's TorchTask on the device, enables DP with a fresh ledger (ε = 1, δ = 1e-5, C = 1, RDP)
for a run of `--fits` rounds, and runs those fits of `--steps` DP-SGD steps each. The first fit
calibrates the noise and warms the device up: it is timed on its own. It prints steps/s, ms per
step (over the later fits) and `torch.cuda.max_memory_allocated`, and checks that:

- the model's parameters and the training data live on the device;
- every fit moved the parameters, and they stay finite;
- ε after each fit grows and never exceeds the budget, and a fit past the planned rounds is
  refused with BudgetExhausted.

With `--device cuda` (the default) and no GPU visible to torch it exits with status 2 and says
why; `--device cpu` runs the same code on the CPU. One short run (well under a minute once torch
is imported), sized for a 5-minute GPU slot:

    python bench/gpu_dp_step.py --json gpu_dp_step.json
    python bench/gpu_dp_step.py --device cpu --steps 20      # the same code path here
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import write_json
from bench.dp_workloads import WORKLOADS, Workload, load
from quorum.errors import BudgetExhausted, QuorumError
from quorum.privacy.dp import DPSettings, PrivacyLedger
from quorum.task import JSONConfig
from quorum.torch_task import params_from_module, resolve_device

NO_GPU = 2
EPSILON, DELTA, MAX_GRAD_NORM = 1.0, 1e-5, 1.0
RUN_ID = "gpu-dp-step"
SEED = 0


def _config(round_index: int, steps: int, fits: int) -> JSONConfig:
    return {
        "local_steps": steps,
        "round": round_index,
        "seed": SEED,
        "run_id": RUN_ID,
        "rounds": fits,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    workload: Workload, device: torch.device, steps: int, fits: int, tmp: Path
) -> dict[str, Any]:
    task = workload.task(str(device), SEED)
    assert all(p.device.type == device.type for p in task.model.parameters()), "model not on device"
    assert task.train_batches.device.type == device.type, "training data not on the device"
    ledger = PrivacyLedger(tmp / f"{workload.key}.json", DPSettings(EPSILON, DELTA, MAX_GRAD_NORM))
    task.enable_dp(ledger)
    params = params_from_module(task.model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    epsilons: list[float] = []
    seconds: list[float] = []
    for r in range(fits):
        _sync(device)
        start = time.perf_counter()
        result = task.fit(params, _config(r, steps, fits))
        _sync(device)
        seconds.append(time.perf_counter() - start)
        moved = any(not (result.params[k] == params[k]).all() for k in params)
        assert moved, f"fit {r} left the parameters unchanged"
        assert all(bool(torch.isfinite(torch.from_numpy(v)).all()) for v in result.params.values())
        eps = float(result.metrics["dp_epsilon"])
        assert eps > (epsilons[-1] if epsilons else 0.0), f"ε did not grow: {epsilons} then {eps}"
        assert eps <= EPSILON * (1 + 1e-9), f"ε {eps} exceeds the budget {EPSILON}"
        epsilons.append(eps)
        params = result.params  # the next round starts from this one's model, as in FedAvg
    try:
        task.fit(params, _config(fits, steps, fits))
    except BudgetExhausted:
        pass
    else:
        raise AssertionError("a fit past the planned rounds was not refused")

    measured = seconds[1:] or seconds
    per_step = sum(measured) / (len(measured) * steps)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "workload": workload.name,
        "params": workload.num_params(),
        "batch_size": workload.batch_size,
        "steps_per_fit": steps,
        "fits": fits,
        "first_fit_s": seconds[0],
        "fit_s": seconds,
        "steps_per_s": 1.0 / per_step,
        "ms_per_step": per_step * 1000,
        "max_memory_allocated_bytes": peak,
        "noise_multiplier": float(result.metrics["dp_noise_multiplier"]),
        "epsilon_per_fit": epsilons,
        "epsilon_budget": EPSILON,
        "last_loss": result.metrics.get("loss", math.nan),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--steps", type=int, default=100, help="DP-SGD steps per fit (default 100)")
    ap.add_argument("--fits", type=int, default=3, help="fits = the run's rounds (default 3)")
    ap.add_argument("--only", choices=WORKLOADS, nargs="+", default=["mnist", "heart"])
    ap.add_argument(
        "--mnist-dir", default=None, help="MNIST IDX folder (default ../shared/data/mnist)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.fits < 2:
        ap.error("--steps must be at least 1 and --fits at least 2 (the first fit is a warm-up)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"gpu_dp_step: no CUDA GPU is visible to torch {torch.__version__} ({build}), so there "
            "is nothing to measure here. Run it on a machine with a GPU and a CUDA build of torch, "
            "or pass --device cpu to check the code path.",
            file=sys.stderr,
        )
        return NO_GPU
    # Opacus's routine notices (RDP's optimal order at the edge of the range, hooks firing on
    # outputs) say nothing about the step.
    warnings.filterwarnings("ignore", module=r"opacus(\.|$)")
    results = []
    try:
        device = resolve_device(args.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"torch {torch.__version__}, device {device} ({name})", flush=True)
        with tempfile.TemporaryDirectory(prefix="quorum-gpu-dp-") as tmp:
            for key in args.only:
                workload = load(key, args.mnist_dir)
                results.append(run(workload, device, args.steps, args.fits, Path(tmp)))
    except QuorumError as exc:
        print(f"gpu_dp_step: {exc}", file=sys.stderr)
        return 1
    print()
    print(
        "| Model | batch | steps/s | ms/step | first fit (s) | max_memory_allocated | σ "
        "| ε after each fit (budget 1) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        peak = r["max_memory_allocated_bytes"]
        memory = f"{peak / 2**20:.1f} MiB" if peak is not None else "n/a (CPU)"
        epsilons = ", ".join(f"{e:.3f}" for e in r["epsilon_per_fit"])
        print(
            f"| {r['workload']} | {r['batch_size']} | {r['steps_per_s']:.1f} "
            f"| {r['ms_per_step']:.2f} | {r['first_fit_s']:.2f} | {memory} "
            f"| {r['noise_multiplier']:.3f} | {epsilons} |"
        )
    print("\nOK: parameters moved every fit, ε stayed within budget, the extra fit was refused.")
    if args.json is not None:
        doc = {
            "device": str(device),
            "device_name": name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "results": results,
        }
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
