"""Loopback ports for child processes (servers, torchrun rendezvous) to bind."""

from __future__ import annotations

import pathlib
import random
import socket
import threading

_LOWEST_PICK = 10_000
_MIN_CHOICE = 1_000
"""Below this many ports under the ephemeral range, picks would collide: take the kernel's."""

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A loopback port that is free now, for a child process to bind later, and never one this
    process has handed out before (its taker may not have bound it yet).

    Picked below the kernel's ephemeral range where that range leaves room: a port the kernel
    hands out (bind to port 0) can be taken by any outgoing connection between this call and
    the child's bind, and on a busy machine that race was seen to kill servers at start-up.
    Ports below the range are only ever taken by an explicit bind."""
    low = _ephemeral_low()
    with _lock:
        if low - _LOWEST_PICK >= _MIN_CHOICE:
            for port in random.sample(range(_LOWEST_PICK, low), 200):
                if port not in _handed_out and _bindable(port):
                    _handed_out.add(port)
                    return port
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else IANA's 49152."""
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152
