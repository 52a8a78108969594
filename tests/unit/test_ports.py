"""Free ports for the local stack come from outside the kernel's ephemeral range.

A port picked from that range (bind to 0, close) can be taken by any outgoing connection of the
running stack before the server binds it; CI then failed setup with 'Address already in use'.
"""

from __future__ import annotations

import socket
from pathlib import Path

from dualwrite.server import free_port


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_free_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert not [p for p in ports if low <= p <= high]
    assert len(set(ports)) == len(ports)  # never handed out twice by one process
    for p in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_someone_listens_on_is_not_handed_out() -> None:
    taken = []
    try:
        for _ in range(50):
            p = free_port()
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            s.listen()
            taken.append(s)
        busy = {s.getsockname()[1] for s in taken}
        assert not busy & {free_port() for _ in range(200)}
    finally:
        for s in taken:
            s.close()
