"""ZeRO's per-rank training state, measured against predicted, for the default GPT on K ranks.

    python bench/zero_memory.py [--nproc 2] [--steps 3] [--json bench/results/zero_memory.json]

Runs `quorum baseline run`'s job (DeepSpeed, stages 0-3, CPU, gloo) for a few steps per stage and
prints, per stage, the bytes of parameters + gradients + optimiser state each rank holds
(`quorum.baseline.memory.state_bytes`, taken between backward and the last optimiser step) beside
two predictions for Ψ fp32 parameters with Adam:

- `deepspeed_fp32`: what DeepSpeed holds in fp32 (derived in
  `quorum.baseline.engines.deepspeed_engine`): 16Ψ, (4 + 16/K)Ψ, (4 + 16/K)Ψ, 20Ψ/K. From stage
  1 on DeepSpeed keeps an fp32 master copy of its partition beside the model's fp32 parameters.
- `paper_fp32`: Rajbhandari et al. (2020)'s accounting carried over to fp32 with no separate
  master copy (4 parameter + 4 gradient + 8 Adam): 16Ψ, (8 + 8/K)Ψ, (4 + 12/K)Ψ, 16Ψ/K.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_json  # noqa: E402
from quorum.baseline import launcher  # noqa: E402
from quorum.baseline.gpt import GPTConfig, parameter_count  # noqa: E402
from quorum.baseline.spec import BaselineSpec  # noqa: E402


def predictions(k: int) -> dict[str, dict[int, float]]:
    return {
        "deepspeed_fp32": {0: 16, 1: 4 + 16 / k, 2: 4 + 16 / k, 3: 20 / k},
        "paper_fp32": {0: 16, 1: 8 + 8 / k, 2: 4 + 12 / k, 3: 16 / k},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    psi = parameter_count(GPTConfig())
    k = args.nproc
    predicted = predictions(k)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in range(4):
            spec = BaselineSpec(
                task="examples.shakespeare.task:task",
                data="nanogpt",
                engine="deepspeed",
                zero_stage=stage,
                nproc=k,
                steps=args.steps,
                device="cpu",
            )
            out = pathlib.Path(tmp) / f"stage{stage}"
            process = launcher.start(spec, out, out / "log.txt")
            if launcher.wait(process) != 0:
                raise SystemExit(launcher.failure_message(out, out / "log.txt", process.returncode))
            result = launcher.read_result(out)
            assert result is not None
            rows.append(
                {
                    "stage": stage,
                    "measured_bytes": result["state_bytes"],
                    "measured_per_param": [b / psi for b in result["state_bytes"]],
                    "deepspeed_fp32_bytes": predicted["deepspeed_fp32"][stage] * psi,
                    "paper_fp32_bytes": predicted["paper_fp32"][stage] * psi,
                    "peak_memory_bytes": result["peak_memory_bytes"],
                    "step_time_s": result["step_time_s"],
                }
            )
    print(f"Ψ = {psi:,} parameters, K = {k} ranks; bytes per parameter per rank")
    print(f"{'stage':>5} {'measured (per rank)':>24} {'DeepSpeed fp32':>15} {'paper fp32':>11}")
    for row in rows:
        measured = " ".join(f"{x:6.2f}" for x in row["measured_per_param"])
        ds = predicted["deepspeed_fp32"][row["stage"]]
        paper = predicted["paper_fp32"][row["stage"]]
        print(f"{row['stage']:>5} {measured:>24} {ds:>15.2f} {paper:>11.2f}")
    if args.json:
        write_json(args.json, {"parameters": psi, "ranks": k, "stages": rows})


if __name__ == "__main__":
    main()
