"""Loopback ports for child processes."""

from __future__ import annotations

import socket

import pytest

from quorum import ports
from quorum.ports import free_port


def test_free_ports_lie_below_the_ephemeral_range_are_distinct_and_can_be_bound() -> None:
    low = ports._ephemeral_low()
    picked = [free_port() for _ in range(50)]
    assert len(set(picked)) == 50  # never the same port twice, even before anyone binds it
    for port in picked:
        if low - 10_000 >= 1_000:
            assert port < low  # never one an outgoing connection could be given meanwhile
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_range_without_room_below_it_falls_back_to_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: 1024)  # "1024 65535"
    picked = [free_port() for _ in range(10)]
    assert len(set(picked)) == 10 and all(p >= 1024 for p in picked)


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
