"""Starting a baseline job with torchrun, and reading what its ranks write.

`command(spec, out_dir)` is the argv; `start(spec, out_dir, log_path)` runs it as the leader of a
new process group (`start_new_session=True`), so `stop(process)` (SIGTERM, then SIGKILL, to the
group) ends torchrun and every rank it started, wherever the caller is (the CLI, the server).
Without rendezvous flags in `spec.torchrun_args` the job is one node with a static rendezvous on
127.0.0.1 and a free port; with them (`--nnodes`, `--rdzv-*`, `--master-*`) torchrun's own
flags decide.

The job folder's contract (the worker writes it, rank 0 only):

- `spec.json`: the `BaselineSpec` (written by `start` before anything runs).
- `progress.jsonl`: one JSON object per logged step, appended and flushed line by line:
  `step`, `steps` (the total), `loss` (the training loss of that step, averaged over the
  data-parallel ranks), `elapsed_s` (since the first step began), `samples_per_s` and
  `tokens_per_s` (over the whole job so far; `tokens_per_s` only for tasks with tokens). A
  reader may see a partial last line while a line is being written; `read_progress` skips it.
- `result.json` (written atomically, once, at the end): `engine`, `zero_stage`, `offload`,
  `tensor_parallel`, `nproc` (ranks per node), `world_size`, `steps`, `batch_size`,
  `learning_rate`, `train_loss` (the last step's), `eval_loss`, `eval_accuracy`, `eval_metrics`
  (every metric the task reports), `samples_per_s`, `tokens_per_s` (null without tokens),
  `step_time_s` (mean), `peak_memory_bytes` (one per rank, in rank order: the peak resident set
  of the process on CPU, `torch.cuda.max_memory_allocated` on CUDA), `state_bytes` (one per
  rank: the bytes of parameters, gradients and optimiser state that rank holds, see
  `quorum.baseline.memory`), `device` and `wall_s`.

- `error-rank{R}.txt`: the exception that ended rank R (its last line, as Python prints it),
  written by each rank that fails; `read_errors` collects them.

The worker exits with a non-zero status on failure, its traceback in the log; there is then no
`result.json`. This module imports neither torch nor the engines, so the server can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Any

from quorum.atomic import write_atomic
from quorum.baseline.spec import BaselineSpec
from quorum.errors import BaselineError
from quorum.ports import free_port

SPEC_FILE = "spec.json"
PROGRESS_FILE = "progress.jsonl"
RESULT_FILE = "result.json"
ERROR_PREFIX = "error-rank"
_RENDEZVOUS_FLAGS = ("--nnodes", "--rdzv", "--master-addr", "--master-port", "--master_")


def command(spec: BaselineSpec, out_dir: str | os.PathLike[str]) -> list[str]:
    """The torchrun argv of the job (see the module docstring)."""
    out = pathlib.Path(out_dir)
    own_rendezvous = any(arg.startswith(_RENDEZVOUS_FLAGS) for arg in spec.torchrun_args)
    rendezvous = (
        []
        if own_rendezvous
        else ["--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    )
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(spec.nproc),
        *rendezvous,
        *spec.torchrun_args,
        "-m",
        "quorum.baseline.worker",
        "--spec",
        str(out / SPEC_FILE),
        "--out",
        str(out),
    ]


def write_spec(spec: BaselineSpec, out_dir: str | os.PathLike[str]) -> pathlib.Path:
    path = pathlib.Path(out_dir) / SPEC_FILE
    write_atomic(path, spec.model_dump_json(indent=2).encode())
    return path


def start(
    spec: BaselineSpec, out_dir: str | os.PathLike[str], log_path: str | os.PathLike[str]
) -> subprocess.Popen[bytes]:
    """Writes `spec.json` and starts torchrun in a new process group, its stdout and stderr
    (every rank's) going to `log_path`. The working directory is the caller's, so a task module
    beside it (`examples.x.task:task`) imports as it does for `quorum sim`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (PROGRESS_FILE, RESULT_FILE, *(p.name for p in out.glob(f"{ERROR_PREFIX}*"))):
        (out / stale).unlink(missing_ok=True)
    write_spec(spec, out)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cwd = os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command(spec, out),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> int:
    """Ends the job: SIGTERM to its process group (torchrun forwards it to the ranks), then
    SIGKILL to the group after `grace_s`. Returns the exit status."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)  # ranks torchrun may have left behind
        return process.returncode
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid, signal.SIGKILL)
        process.wait()
    _kill_group(process.pid, signal.SIGKILL)
    return process.returncode


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_progress(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The progress lines written so far (an incomplete last line is left for the next read)."""
    path = pathlib.Path(out_dir) / PROGRESS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for line in lines[:-1]:  # the part after the last newline is not complete yet
        if line.strip():
            records.append(json.loads(line))
    return records


def read_result(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """`result.json`, or None while the job has not finished (or when it failed)."""
    path = pathlib.Path(out_dir) / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise BaselineError(f"{path} is not a JSON object")
    return data


def read_errors(out_dir: str | os.PathLike[str]) -> dict[int, str]:
    """The error of each rank that failed, by rank."""
    errors = {}
    for path in pathlib.Path(out_dir).glob(f"{ERROR_PREFIX}*.txt"):
        rank = path.stem.removeprefix(ERROR_PREFIX)
        if rank.isdigit():
            errors[int(rank)] = path.read_text(encoding="utf-8", errors="replace")
    return dict(sorted(errors.items()))


def failure_message(
    out_dir: str | os.PathLike[str], log_path: str | os.PathLike[str], returncode: int | None
) -> str:
    """What went wrong, for a person: each failed rank's error, then the end of the log."""
    errors = read_errors(out_dir)
    lines = [f"the baseline job failed (exit status {returncode})"]
    lines += [f"rank {rank}: {error}" for rank, error in errors.items()]
    lines.append(f"the end of {log_path}:\n{log_tail(log_path, 15 if errors else 40)}")
    return "\n".join(lines)


def log_tail(log_path: str | os.PathLike[str], lines: int = 40) -> str:
    """The last `lines` lines of a job's log (empty when there is none)."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except FileNotFoundError:
        return ""


def wait(process: subprocess.Popen[bytes], poll_s: float = 0.2) -> int:
    """Waits for the job; a KeyboardInterrupt stops every rank before it propagates."""
    try:
        while process.poll() is None:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        stop(process)
        raise
    return process.returncode
