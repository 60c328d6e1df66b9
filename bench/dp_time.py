"""What DP-SGD costs a site: one local epoch with and without differential privacy.

For each workload (bench/dp_workloads.py: the heart-disease example's `Linear(13, 1)` at the
Cleveland site, batch 4; a small MNIST CNN on 8,000 images, batch 64) it times, in one process:

- Quorum, no DP: `TorchTask.fit(params, {"local_epochs": 1, ...})`, what a site agent runs.
- Quorum, DP: the same fit after `TorchTask.enable_dp(PrivacyLedger(...))` (ε = 1, δ = 1e-5,
  C = 1, RDP), in a fresh ledger. The run's first DP fit calibrates the noise multiplier; it is
  timed on its own (with the calibration inside it timed too) and is not one of the repeats.
- Plain Opacus, Flower-style: what the client of Flower's Opacus example
  (adap/flower, examples/opacus) does in each fit: a fresh model loaded with the parameters, a
  fresh optimiser and DataLoader, `opacus.PrivacyEngine(secure_mode=False).make_private(...)`
  (Poisson sampling, Opacus's default accountant), one epoch, `get_epsilon(delta)`. It gets the
  noise multiplier Quorum calibrated, the same model, data, batch size, clipping norm and plain
  SGD (Flower's example adds momentum 0.9, which costs the same in both and is left out).

After one warm-up fit of each, the three are run in turn `--repeats` times (interleaved, so a
slow spell of the machine hits all three alike) and the table gives the medians. Torch uses one
thread unless `--threads` says otherwise.

    python bench/dp_time.py                          # both workloads, CPU, ~1 min on 2 cores
    python bench/dp_time.py --device cuda --repeats 10 --json bench/results/dp_time_gpu.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# One BLAS/OpenMP thread unless the caller's environment says otherwise, as in the other
# benchmarks. Set before numpy loads: otherwise numpy's OpenBLAS, which Opacus's accountant
# uses, starts a second thread that keeps spinning after get_epsilon, so on 2 cores it competes
# with the fit being timed (a loop of Flower-style heart-disease fits took 1.9x as long).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import opacus  # type: ignore[import-untyped]
import torch
from torch.utils.data import DataLoader

from bench.common import write_json
from bench.dp_workloads import WORKLOADS, Workload, load
from quorum.errors import QuorumError
from quorum.privacy.dp import DPSettings, PrivacyLedger
from quorum.task import FitResult, JSONConfig
from quorum.torch_task import TorchTask, load_params, params_from_module, resolve_device
from quorum.wire.blobs import Params

EPSILON, DELTA, MAX_GRAD_NORM = 1.0, 1e-5, 1.0
PLANNED_ROUNDS = 15
"""The run the ledger calibrates for (FLamby's 15 rounds); more when the repeats need more."""
RUN_ID = "bench"
SEED = 0
T = TypeVar("T")


class TimedLedger(PrivacyLedger):
    """A PrivacyLedger that adds up the seconds spent in the methods a DP fit calls."""

    def __init__(self, path: Path, settings: DPSettings) -> None:
        super().__init__(path, settings)
        self.seconds: dict[str, float] = defaultdict(float)

    def _timed(self, name: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.seconds[name] += time.perf_counter() - start

    def plan(self, run_id: str, sample_rate: float, total_steps: int) -> float:
        return self._timed(
            "plan", lambda: super(TimedLedger, self).plan(run_id, sample_rate, total_steps)
        )

    def check(self, run_id: str, steps: int) -> None:
        self._timed("check", lambda: super(TimedLedger, self).check(run_id, steps))

    def record(self, run_id: str, steps: int) -> float:
        return self._timed("record", lambda: super(TimedLedger, self).record(run_id, steps))

    def report(self, run_id: str) -> dict[str, float]:
        return self._timed("report", lambda: super(TimedLedger, self).report(run_id))

    def take(self) -> dict[str, float]:
        """The seconds added up since the last call, then reset."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out


class OpacusClient:
    """The fit of Flower's Opacus example client, on a workload: everything it builds per fit."""

    def __init__(self, workload: Workload, device: torch.device, noise_multiplier: float) -> None:
        self.workload = workload
        self.device = device
        self.noise_multiplier = noise_multiplier
        self.loss_fn = workload.loss_fn().to(device)

    def fit(self, params: Params) -> tuple[Params, dict[str, float]]:
        w = self.workload
        start, cpu = time.perf_counter(), time.process_time()
        model = w.make_model(SEED).to(self.device)
        load_params(model, params)
        optimizer = torch.optim.SGD(model.parameters(), lr=w.lr)
        loader: DataLoader[Any] = DataLoader(w.train, batch_size=w.batch_size, shuffle=True)
        engine = opacus.PrivacyEngine(secure_mode=False)
        private_model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=MAX_GRAD_NORM,
        )
        wrapped = time.perf_counter()
        private_model.train()
        steps = 0
        for inputs, targets in dp_loader:
            dp_optimizer.zero_grad()
            loss = self.loss_fn(private_model(inputs.to(self.device)), targets.to(self.device))
            loss.backward()
            dp_optimizer.step()
            steps += 1
        _sync(self.device)
        trained = time.perf_counter()
        epsilon = engine.get_epsilon(delta=DELTA)
        accounted = time.perf_counter()
        out = params_from_module(model)
        done = time.perf_counter()
        return out, {
            "fit_s": done - start,
            "fit_cpu_s": time.process_time() - cpu,
            "make_private_s": wrapped - start,
            "epoch_loop_s": trained - wrapped,
            "get_epsilon_s": accounted - trained,
            "steps": steps,
            "epsilon": float(epsilon),
            "sample_rate": float(dp_loader.sample_rate),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(round_index: int, rounds: int) -> JSONConfig:
    return {
        "local_epochs": 1,
        "round": round_index,
        "seed": SEED,
        "run_id": RUN_ID,
        "rounds": rounds,
    }


def _timed_fit(
    task: TorchTask, params: Params, config: JSONConfig, device: torch.device
) -> tuple[float, float, FitResult]:
    """Wall-clock and CPU seconds of one fit, and its result. The table uses wall-clock time,
    as the other benchmarks do; CPU time (process_time) is kept in the JSON for reference."""
    start, cpu = time.perf_counter(), time.process_time()
    result = task.fit(params, config)
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, result


def _moved(before: Params, after: Params) -> bool:
    return any(
        not torch.equal(torch.from_numpy(before[k]), torch.from_numpy(after[k])) for k in before
    )


def measure(
    workload: Workload, device: torch.device, repeats: int, workdir: Path
) -> dict[str, Any]:
    rounds = max(PLANNED_ROUNDS, 1 + repeats)
    params = params_from_module(workload.make_model(SEED))
    plain = workload.task(str(device), SEED)
    private = workload.task(str(device), SEED)
    ledger = TimedLedger(
        workdir / f"{workload.key}-ledger.json",
        DPSettings(EPSILON, DELTA, MAX_GRAD_NORM),
    )
    private.enable_dp(ledger)

    # Warm-ups. The first DP fit of a run calibrates the noise: timed, but not a repeat.
    _timed_fit(plain, params, _config(0, rounds), device)
    first_dp_s, _, first = _timed_fit(private, params, _config(0, rounds), device)
    first_ledger = ledger.take()
    sigma = float(first.metrics["dp_noise_multiplier"])
    client = OpacusClient(workload, device, sigma)
    client.fit(params)

    samples: dict[str, list[float]] = defaultdict(list)
    dp_metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    for r in range(1, repeats + 1):
        seconds, cpu, result = _timed_fit(plain, params, _config(r, rounds), device)
        samples["quorum_nodp_fit_s"].append(seconds)
        samples["quorum_nodp_fit_cpu_s"].append(cpu)
        assert _moved(params, result.params), "a no-DP fit left the parameters unchanged"

        seconds, cpu, result = _timed_fit(private, params, _config(r, rounds), device)
        spent = ledger.take()
        samples["quorum_dp_fit_s"].append(seconds)
        samples["quorum_dp_fit_cpu_s"].append(cpu)
        samples["quorum_dp_ledger_s"].append(sum(spent.values()))
        for method in ("check", "record", "report"):
            samples[f"quorum_dp_ledger_{method}_s"].append(spent.get(method, 0.0))
        samples["quorum_dp_fit_minus_ledger_s"].append(seconds - sum(spent.values()))
        assert _moved(params, result.params), "a DP fit left the parameters unchanged"
        dp_metrics = result.metrics

        out, timings = client.fit(params)
        assert _moved(params, out), "a plain-Opacus fit left the parameters unchanged"
        for key in ("fit_s", "fit_cpu_s", "make_private_s", "epoch_loop_s", "get_epsilon_s"):
            samples[f"opacus_{key}"].append(timings[key])

    assert dp_metrics["dp_epsilon"] <= EPSILON * (1 + 1e-9), dp_metrics
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return {
        "workload": workload.name,
        "params": workload.num_params(),
        "train_examples": len(workload.train),
        "batch_size": workload.batch_size,
        "steps_per_epoch": private.train_batches.batches_per_epoch(),
        "opacus_steps_last_epoch": timings["steps"],
        "quorum_sample_rate": ledger.sample_rate(RUN_ID),
        "opacus_sample_rate": timings["sample_rate"],
        "noise_multiplier": sigma,
        "planned_rounds": rounds,
        "quorum_epsilon_after": dp_metrics["dp_epsilon"],
        "opacus_epsilon_one_fit": timings["epsilon"],
        "opacus_accountant": "prv (Opacus's default)",
        "quorum_accountant": "rdp",
        "first_dp_fit_s": first_dp_s,
        "first_dp_fit_calibration_s": first_ledger.get("plan", 0.0),
        "first_dp_fit_ledger_s": sum(first_ledger.values()),
        "medians": medians,
        "samples": dict(samples),
    }


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def table(results: list[dict[str, Any]], repeats: int) -> str:
    lines = [
        f"One local epoch, median of {repeats} fits after a warm-up (seconds unless marked):",
        "",
        "| Model | params | examples / batch / steps | Quorum no-DP | Quorum DP | DP / no-DP "
        "| Opacus (Flower-style) DP | Quorum DP / Opacus DP |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["medians"]
        lines.append(
            f"| {r['workload']} | {r['params']:,} | {r['train_examples']:,} / {r['batch_size']} / "
            f"{r['steps_per_epoch']} | {_fmt(m['quorum_nodp_fit_s'])} "
            f"| {_fmt(m['quorum_dp_fit_s'])} "
            f"| {m['quorum_dp_fit_s'] / m['quorum_nodp_fit_s']:.1f}× "
            f"| {_fmt(m['opacus_fit_s'])} "
            f"| {m['quorum_dp_fit_s'] / m['opacus_fit_s']:.2f}× |"
        )
    lines += [
        "",
        "Inside the DP fits (medians; the first DP fit is the run's first, with the calibration):",
        "",
        "| Model | Quorum: fit − ledger | Quorum: ledger (check + record + report) "
        "| Quorum: first DP fit | of which noise calibration | Opacus: make_private "
        "| Opacus: epoch loop | Opacus: get_epsilon | training loops, Quorum / Opacus |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["medians"]
        lines.append(
            f"| {r['workload']} | {_fmt(m['quorum_dp_fit_minus_ledger_s'])} "
            f"| {_fmt(m['quorum_dp_ledger_s'])} | {_fmt(r['first_dp_fit_s'])} "
            f"| {_fmt(r['first_dp_fit_calibration_s'])} | {_fmt(m['opacus_make_private_s'])} "
            f"| {_fmt(m['opacus_epoch_loop_s'])} | {_fmt(m['opacus_get_epsilon_s'])} "
            f"| {m['quorum_dp_fit_minus_ledger_s'] / m['opacus_epoch_loop_s']:.2f}× |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="measured fits of each kind (default 5)")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--only", choices=WORKLOADS, nargs="+", default=list(WORKLOADS))
    ap.add_argument(
        "--mnist-dir",
        default=None,
        help="folder of the MNIST IDX files (default ../shared/data/mnist)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except QuorumError as exc:
        print(f"dp_time: {exc}", file=sys.stderr)
        return 2
    # Opacus's routine notices (no secure RNG, RDP's optimal order at the edge of the range,
    # hooks firing on outputs) say nothing about time.
    warnings.filterwarnings("ignore", module=r"opacus(\.|$)")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    logging.getLogger("opacus").setLevel(logging.ERROR)
    torch.manual_seed(SEED)
    load_before = os.getloadavg()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="quorum-dp-bench-") as tmp:
            for name in args.only:
                workload = load(name, args.mnist_dir)
                print(f"measuring {workload.name} on {device} ...", file=sys.stderr, flush=True)
                results.append(measure(workload, device, args.repeats, Path(tmp)))
    except QuorumError as exc:  # e.g. no MNIST folder: say what is missing, not a traceback
        print(f"dp_time: {exc}", file=sys.stderr)
        return 1
    print(table(results, args.repeats))
    if args.json is not None:
        doc = {
            "definition": "seconds of TorchTask.fit / of a Flower-style Opacus client fit, one "
            "local epoch, median of the repeats after one warm-up fit of each",
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "repeats": args.repeats,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "dp": {"epsilon": EPSILON, "delta": DELTA, "max_grad_norm": MAX_GRAD_NORM},
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "opacus": opacus.__version__,
            },
            "results": results,
        }
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
