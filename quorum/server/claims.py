"""What one server process claims for itself, refused in one line when another holds it.

- Its state directory: two servers on one store would run the same runs twice and interleave
  their checkpoints. An exclusive `flock` on STATE/server.lock, which the kernel releases when
  the process ends however it ends (no stale lock after `kill -9`).
- Its two ports: gRPC turns SO_REUSEPORT on by default, so a second server on the same
  federation port listened beside the first and took half the sites; uvicorn reports a port in
  use with a long traceback. Both are bound here without port sharing, before anything starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket

from quorum.errors import ConfigError

LOCK_FILE = "server.lock"

NO_PORT_SHARING = ("grpc.so_reuseport", 0)
"""gRPC server option: a federation port another process listens on is refused."""


class StateLock:
    """Held from construction until `release` (or the process's end)."""

    def __init__(self, state_dir: pathlib.Path) -> None:
        path = state_dir / LOCK_FILE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise ConfigError(
                f"another server (pid {holder}) is using the state directory {state_dir}; "
                "stop it first, or give this one its own state_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def bind(host: str, port: int, what: str) -> socket.socket:
    """A listening socket on host:port without port sharing, or one line saying why not. The
    admin API serves on it; the federation port is tried this way first and then bound by
    gRPC (whose own refusal is an error line of its C core and a bare RuntimeError)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only, not sharing
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} for {what}: {exc.strerror} (another server? "
            "set another address in the server config)"
        ) from None
    return sock
