"""Loopback ports for child processes (servers, torchrun rendezvous) to bind."""

from __future__ import annotations

import pathlib
import random
import socket


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
