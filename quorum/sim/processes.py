"""Child processes of a simulation: started with their logs in files, stopped for sure."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mb(self) -> float | None:
        """The process's peak resident memory so far (Linux's VmHWM), None where unknown."""
        try:
            status = pathlib.Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(
    name: str, args: list[str], log_dir: pathlib.Path, env: dict[str, str] | None = None
) -> Child:
    """Runs `python -m quorum ARGS` with stdout and stderr in log_dir/NAME.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "quorum", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def stop(children: list[Child], timeout: float = 10.0) -> None:
    """SIGTERM to each, then SIGKILL to what is still running after `timeout`."""
    for child in children:
        if child.alive():
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
