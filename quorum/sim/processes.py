"""Child processes of a simulation: started with their logs in files, stopped for sure."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass


def free_port() -> int:
    """A loopback port that is free now, for a child process to bind later.

    Picked below the kernel's ephemeral range: a port the kernel hands out (bind to port 0)
    can be taken by any outgoing connection between this call and the child's bind, and on a
    busy machine that race was seen to kill servers at start-up. Ports below the range are
    only ever taken by an explicit bind."""
    low = _ephemeral_low()
    for port in random.sample(range(_LOWEST_PICK, low), min(200, low - _LOWEST_PICK)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LOWEST_PICK = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else IANA's 49152."""
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 49_152
    return max(low, _LOWEST_PICK + 1)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def alive(self) -> bool:
        return self.process.poll() is None

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
