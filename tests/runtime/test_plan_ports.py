"""Planned data addresses avoid the ports outgoing connections are given."""

from __future__ import annotations

import socket
from pathlib import Path

from areal_flow.runtime.plan import EPHEMERAL_RANGE, free_tcp_address


def test_planned_ports_lie_outside_the_ephemeral_range_and_are_free() -> None:
    low, high = map(int, Path(EPHEMERAL_RANGE).read_text().split())
    addresses = {free_tcp_address() for _ in range(50)}
    assert len(addresses) > 40  # random picks, not one port handed out again and again
    for address in addresses:
        port = int(address.rsplit(":", 1)[1])
        assert not low <= port <= high, address
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free


def test_a_plan_never_gives_one_port_twice() -> None:
    taken: set[str] = set()
    for _ in range(2000):  # random picks from ~20k ports: repeats without ``taken``
        address = free_tcp_address(taken=taken)
        assert address not in taken
        taken.add(address)
