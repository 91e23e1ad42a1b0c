"""What the web view shows, as JSON: the graph's layout once, then live snapshots.

Rules:
- ``layout(g)`` is the ``viz`` drawing's geometry (``layered_positions``, role colours, node
  and edge labels): the page draws the same picture as ``areal-flow viz``.
- ``LiveFeed`` is a driver ``on_update`` callback. It only copies what the driver already holds
  in memory (replica states, restarts, heartbeat counters, the staleness gate) into a dict, at
  most ``hz`` times a second; it never touches files or sockets. The server thread reads
  ``latest`` (one reference swap, so no lock) and the run folder's files itself.
- Rates (node batches/s, edge batches/s) are windowed like the terminal view's (``live.Rates``):
  a slow node does not flicker to 0.0, a restarted replica never shows a negative rate.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

import networkx as nx

from areal_flow.graph import resolved_edges
from areal_flow.roles import role_of
from areal_flow.runtime.live import Rates, node_states
from areal_flow.viz import ROLE_COLOURS, edge_label, layered_positions

if TYPE_CHECKING:
    from areal_flow.runtime.driver import Driver

#: Heartbeat gauges shown per node when a replica reports them (summed over replicas).
NODE_GAUGES = ("gen_tokens_per_s", "tokens_per_s", "rss_mb")


def layout(g: nx.MultiDiGraph) -> dict[str, Any]:
    """Nodes (name, kind, role, colour, replicas, x, y) and edges, as ``viz`` lays them out."""
    positions = layered_positions(g)
    nodes = []
    for name, data in g.nodes(data=True):
        spec = data["spec"]
        x, y = positions[name]
        role = role_of(spec)
        nodes.append(
            {
                "name": name,
                "kind": spec.kind,
                "role": role,
                "colour": ROLE_COLOURS.get(role, "#e8e8e8"),
                "replicas": spec.replicas,
                "x": x,
                "y": y,
            }
        )
    edges = [
        {
            "index": e.index,
            "src": e.src,
            "dst": e.dst,
            "label": e.label,
            "text": edge_label(e),
            "record": e.record,
            "capacity": e.spec.capacity,
            "weights": e.weights,
        }
        for e in resolved_edges(g)
    ]
    return {"name": g.name, "nodes": nodes, "edges": edges}


class EdgeRates:
    """Batches/s per edge from the consumers' cumulative ``edge.<i>.received`` counters."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._history: dict[int, deque[tuple[float, float]]] = defaultdict(deque)
        self.per_edge: dict[int, float] = {}

    def update(self, received: dict[int, float], now: float) -> None:
        for edge, total in received.items():
            history = self._history[edge]
            history.append((now, total))
            while len(history) > 2 and now - history[1][0] >= self.window_s:
                history.popleft()
            then, before = history[0]
            if now - then >= 0.5:
                self.per_edge[edge] = max(total - before, 0.0) / (now - then)


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded capacity is sent as null."""
    return value if math.isfinite(value) else None


class LiveFeed:
    """Driver callback: the latest snapshot of the run, refreshed at most ``hz`` times a second."""

    def __init__(self, hz: float = 4.0) -> None:
        self.every = 1.0 / hz
        self.rates = Rates()
        self.edge_rates = EdgeRates()
        self.latest: dict[str, Any] | None = None
        self.seq = 0
        self.status = "starting"
        self._last = 0.0

    def __call__(self, driver: Driver) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.publish(snapshot(driver, self.rates, self.edge_rates, now))

    def publish(self, state: dict[str, Any]) -> None:
        """Swap in a new snapshot (the server thread picks it up by ``seq``)."""
        self.seq += 1
        state["seq"] = self.seq
        self.latest = state

    def finish(self, status: str) -> None:
        """The run ended: the last snapshot says so."""
        if self.latest is not None:
            self.publish({**self.latest, "status": status})


def snapshot(driver: Driver, rates: Rates, edge_rates: EdgeRates, now: float) -> dict[str, Any]:
    """Per node state and counters, per edge queue and rate, the gate and the lag histogram."""
    rates.update(driver)
    states = node_states(driver)
    nodes: dict[str, dict[str, Any]] = {}
    received: dict[int, float] = defaultdict(float)
    depths: dict[int, float] = defaultdict(float)
    for replica in driver.replicas.values():
        name = replica.plan.node
        node = nodes.setdefault(
            name,
            {"replicas": 0, "restarts": 0, "in": 0.0, "out": 0.0, "busy_s": 0.0, "pids": []},
        )
        node["replicas"] += 1
        node["restarts"] += replica.restarts
        metrics = replica.metrics
        node["in"] += metrics.get("batches_in", 0.0)
        node["out"] += metrics.get("batches_out", 0.0)
        node["busy_s"] += metrics.get("busy_s", 0.0)
        for gauge in NODE_GAUGES:
            if gauge in metrics:
                node[gauge] = node.get(gauge, 0.0) + metrics[gauge]
        if replica.pid is not None:
            node["pids"].append(replica.pid)
        if replica.error:
            node["error"] = replica.error
        for key, value in metrics.items():
            if key.startswith("edge."):
                _, index, what = key.split(".", 2)
                if what == "received":
                    received[int(index)] += value
                elif what == "depth":
                    depths[int(index)] += value
    for name, node in nodes.items():
        node["state"] = states.get(name, "-")
        node["rate"] = rates.per_node.get(name, 0.0)
    edge_rates.update(dict(received), now)
    edges = {
        str(index): {
            "depth": depths.get(index, 0.0),
            "received": received.get(index, 0.0),
            "rate": edge_rates.per_edge.get(index, 0.0),
        }
        for index in {*received, *depths}
    }
    gate: dict[str, Any] | None = None
    lag: dict[str, float] = {}
    if driver.gate is not None:
        metrics = driver.gate.metrics()
        lag = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("lag/")}
        gate = {k: _finite(v) for k, v in metrics.items() if not k.startswith("lag/")}
    status = "failed" if driver.failure is not None else "running"
    return {
        "status": status,
        "failure": str(driver.failure) if driver.failure is not None else None,
        "elapsed_s": now - driver.started,
        "version": driver.version,
        "nodes": nodes,
        "edges": edges,
        "gate": gate,
        "lag": lag,
    }
