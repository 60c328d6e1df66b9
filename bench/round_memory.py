"""Server and site peak memory against the model's size, and round time against the transfer
floor, for sync, async (FedBuff) and SecAgg+ rounds at one model size (and, with `--modes
async-dp`, async rounds under central DP).

For each mode, one Quorum run (`quorum server start` and N `quorum client run` processes on
loopback, the bench/round_time.py workload: P float32 values in 8 tensors, free local training,
no evaluation); the kernel's own peak RSS (VmHWM) of the server and of each site is read before
they stop and printed as a multiple of the model's bytes. The same invocation measures the bare
transfer floor (bench/loopback.py: N concurrent fetches, then N concurrent pushes of the model's
bytes over loopback gRPC) and prints the sync round time against it.

    python bench/round_memory.py --params 250000000 --nodes 2     # 1 GB model, ~10 GB of RAM
    python bench/round_memory.py --params 560000000 --nodes 2     # 2.24 GB, ~15 GB of RAM

At P = 560M the model is past protobuf's 2 GiB limit (it is sent in 2 MiB chunks); a run needs
about 2 x 2.24 GB for the server and as much per site, page cache for the uploads' spools and
disk for the checkpoints: it fits this 24 GiB, 2-core machine when nothing else large runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import loopback, quorum_side
from bench.common import RESULTS_DIR, RunSpec, quorum_revision, stop_on_sigterm, write_json

MB = 1e6
HEADER_BYTES = 1024
"""About the safetensors header of the 8-tensor model: the model's bytes are 4 P plus this."""

MODES: dict[str, quorum_side.Options] = {
    "sync": quorum_side.Options("mem_sync"),
    "async": quorum_side.Options(
        "mem_async", run={"mode": "async", "buffer_size": 2, "max_staleness": 2}
    ),
    "secagg": quorum_side.Options("mem_secagg", secagg={"enabled": True}),
    # DP-FedBuff: each update clipped, Gaussian noise on each buffer's sum (z = 1, C = 1).
    "async-dp": quorum_side.Options(
        "mem_async_dp",
        run={
            "mode": "async",
            "buffer_size": 2,
            "max_staleness": 2,
            "central_dp": {"enabled": True, "noise_multiplier": 1.0, "clipping_norm": 1.0},
        },
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=int, default=250_000_000)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--modes", nargs="+", choices=sorted(MODES), default=["sync", "async", "secagg"]
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--interval", type=float, default=0.25, help="RSS sampling period (s)")
    return ap.parse_args(argv)


def row(mode: str, result: dict[str, Any], model_mb: float, floor_s: float | None) -> str:
    server = result.get("server_vmhwm_mb", 0.0) * 2**20 / MB
    site = max(result.get("sites_vmhwm_mb") or [0.0]) * 2**20 / MB
    stats = result.get("round_time_stats") or {}
    round_s = stats.get("median")
    ratio = f"{round_s / floor_s:.1f}" if round_s and floor_s else "—"
    round_text = f"{round_s:.2f}" if round_s else "—"
    cpu = result.get("server_cpu_s_per_round", 0.0) + result.get("clients_cpu_s_per_round", 0.0)
    errors = "; ".join(result.get("errors", []))[:120]
    return (
        f"| {mode} | {server:,.0f} | {server / model_mb:.2f} | {site:,.0f} | {site / model_mb:.2f} "
        f"| {round_text} | {ratio} | {cpu:.1f} | {errors} |"
    )


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = parse_args(argv)
    model_bytes = 4 * args.params + HEADER_BYTES
    model_mb = model_bytes / MB
    floor = loopback.floor(model_bytes, args.nodes)
    print(f"# transfer floor: {json.dumps(floor)}", flush=True)
    results: dict[str, Any] = {
        "params": args.params,
        "nodes": args.nodes,
        "model_mb": model_mb,
        "revision": quorum_revision(),
        "floor": floor,
        "runs": {},
    }
    lines = [
        f"P = {args.params:,} ({model_mb:,.0f} MB model), N = {args.nodes}; transfer floor "
        f"{floor['floor_s']:.2f} s ({floor['fetch_s']:.2f} s fetch + {floor['push_s']:.2f} s push, "
        f"{floor['cpu_s']:.2f} CPU s)",
        "",
        "| mode | server peak (MB) | × model | site peak (MB) | × model | round (s) "
        "| round / floor | CPU s per round (server + sites) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    failed = False
    for mode in args.modes:
        spec = RunSpec(
            args.params, args.nodes, args.rounds, args.warmup, args.timeout, args.interval
        )
        result = quorum_side.run(spec, MODES[mode])
        result.pop("samples", None)
        results["runs"][mode] = result
        failed = failed or bool(result.get("errors"))
        lines.append(row(mode, result, model_mb, floor["floor_s"]))
        print(lines[-1], flush=True)
        # After each mode: a run cut short (a timeout) keeps the modes it finished.
        write_json(RESULTS_DIR / f"round_memory_P{args.params}_N{args.nodes}.json", results)
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
