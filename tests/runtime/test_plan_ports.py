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
