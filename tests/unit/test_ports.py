"""Loopback ports for child processes."""

from __future__ import annotations

import pathlib
import socket

from quorum.ports import free_port


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound() -> None:
    low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # picked at random, not one fixed port
    for port in ports:
        assert port < low  # never one an outgoing connection could be given meanwhile
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_not_picked() -> None:
    held = []
    try:
        for _ in range(50):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            port = free_port()
            sock.bind(("127.0.0.1", port))  # would raise if free_port gave a held one
            sock.listen()
            held.append(sock)
    finally:
        for sock in held:
            sock.close()
