"""`quorum baseline run`: train a task's centralised baseline with torchrun, watch it, print it.

The command builds a `BaselineSpec` from its flags (anything after `--` goes to torchrun: a
multi-node job's `--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:PORT`),
refuses a DeepSpeed or Megatron job when the `llm` extra is missing, starts the job
(`quorum.baseline.launcher`), draws a progress bar from `progress.jsonl`, and prints the result
as a table. A job that fails raises BaselineError with the tail of its log (exit status 2, as
every Quorum error); Ctrl-C stops every rank. Importing this module does not import torch.
"""

from __future__ import annotations

import pathlib
import time
from typing import Annotated, Any, get_args

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quorum.baseline import launcher
from quorum.baseline.extra import require_llm_extra
from quorum.baseline.spec import BaselineSpec, parse_spec
from quorum.errors import BaselineError

baseline_app = typer.Typer(
    no_args_is_help=True,
    help="Centralised baselines of federated tasks (DDP, DeepSpeed ZeRO, Megatron TP).",
)
_console = Console(stderr=True)
_stdout = Console()
LOG_FILE = "log.txt"


def _choices(setting: str) -> tuple[str, ...]:
    """The values a BaselineSpec setting allows (a Literal), for the flag's checked choices."""
    return tuple(get_args(BaselineSpec.model_fields[setting].annotation))


@baseline_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def run_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="the task, module:attribute")],
    data: Annotated[str, typer.Option(help="the task's data (default: pooled)")] = "pooled",
    engine: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(_choices("engine")),
            help="ddp, deepspeed or megatron (the last two need quorum-fl\\[llm])",
        ),
    ] = "ddp",
    zero_stage: Annotated[int, typer.Option(help="DeepSpeed ZeRO stage, 0-3")] = 0,
    offload: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(_choices("offload")),
            help="DeepSpeed optimiser offload: none or cpu",
        ),
    ] = "none",
    tensor_parallel: Annotated[int, typer.Option(help="Megatron tensor-parallel ranks")] = 1,
    nproc: Annotated[int, typer.Option(help="ranks on this node")] = 1,
    steps: Annotated[int | None, typer.Option(help="optimiser steps (default 200)")] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the training set")] = None,
    batch_size: Annotated[int | None, typer.Option(help="global batch (task default)")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam's learning rate (task default)")] = None,
    seed: int = 0,
    device: Annotated[
        str, typer.Option(click_type=click.Choice(_choices("device")), help="auto, cpu or cuda")
    ] = "auto",
    log_every: Annotated[int, typer.Option(help="steps between progress lines")] = 10,
    out: Annotated[
        pathlib.Path, typer.Option(help="the job's folder (spec, progress, result, log)")
    ] = pathlib.Path("baseline-output"),
) -> None:
    """Train TASK's centralised baseline; arguments after `--` go to torchrun.

    Example: quorum baseline run --task examples.heart_disease.task:task --engine ddp --nproc 2
    """
    spec = parse_spec(
        {
            "task": task,
            "data": data,
            "engine": engine,
            "zero_stage": zero_stage,
            "offload": offload,
            "tensor_parallel": tensor_parallel,
            "nproc": nproc,
            "steps": steps,
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": lr,
            "seed": seed,
            "device": device,
            "log_every": log_every,
            "torchrun_args": list(ctx.args),
        }
    )
    result = run_job(spec, out)
    _stdout.print(result_table(result))
    _console.print(f"result: {out / launcher.RESULT_FILE}")


def run_job(spec: BaselineSpec, out: pathlib.Path, console: Console = _console) -> dict[str, Any]:
    """Starts the job, shows its progress until it ends, and returns its result; BaselineError
    with the log's tail when it fails."""
    require_llm_extra(spec.engine)
    log_path = out / LOG_FILE
    out.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    process = launcher.start(spec, out, log_path)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            job = bar.add_task(_describe(spec), total=spec.steps, status="starting")
            while True:
                done = process.poll() is not None
                records = launcher.read_progress(out)
                if records:
                    last = records[-1]
                    bar.update(
                        job, completed=last["step"], total=last["steps"], status=_status(last)
                    )
                if done:
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        launcher.stop(process)
        raise
    launcher.stop(process)  # ranks torchrun may have left behind
    result = launcher.read_result(out)
    if process.returncode != 0 or result is None:
        raise BaselineError(launcher.failure_message(out, log_path, process.returncode))
    return result


def _describe(spec: BaselineSpec) -> str:
    extra = {
        "deepspeed": f" ZeRO-{spec.zero_stage}" + (" offload" if spec.offload == "cpu" else ""),
        "megatron": f" TP={spec.tensor_parallel}",
    }.get(spec.engine, "")
    return f"{spec.engine}{extra} x{spec.nproc}"


def _status(record: dict[str, Any]) -> str:
    rate = record.get("tokens_per_s")
    speed = (
        f"{rate:,.0f} tok/s" if rate is not None else f"{record['samples_per_s']:,.0f} samples/s"
    )
    return f"loss {record['loss']:.4f}  {speed}"


def result_table(result: dict[str, Any]) -> Table:
    """The result as a two-column table, then one row per rank for memory."""
    table = Table(title="baseline result", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    engine = result["engine"]
    if engine == "deepspeed":
        engine += f" ZeRO-{result['zero_stage']} (offload {result['offload']})"
    elif engine == "megatron":
        engine += f" TP={result['tensor_parallel']}"
    rows: list[tuple[str, str]] = [
        ("engine", engine),
        ("ranks", str(result["world_size"])),
        ("steps x global batch", f"{result['steps']} x {result['batch_size']}"),
        ("train loss", _num(result["train_loss"])),
        ("eval loss", _num(result["eval_loss"])),
        ("eval accuracy", _num(result["eval_accuracy"])),
        ("samples/s", f"{result['samples_per_s']:,.1f}"),
        ("tokens/s", "-" if result["tokens_per_s"] is None else f"{result['tokens_per_s']:,.0f}"),
        ("step time", f"{result['step_time_s'] * 1000:.1f} ms"),
        ("wall time", f"{result['wall_s']:.1f} s"),
    ]
    for key, value in result.get("eval_metrics", {}).items():
        if key not in ("loss", "accuracy"):
            rows.append((f"eval {key}", _num(value)))
    for rank, (peak, state) in enumerate(
        zip(result["peak_memory_bytes"], result["state_bytes"], strict=True)
    ):
        rows.append(
            (f"rank {rank} memory", f"peak {_mib(peak)}, params+grads+optimiser {_mib(state)}")
        )
    for name, value in rows:
        table.add_row(name, value)
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"
