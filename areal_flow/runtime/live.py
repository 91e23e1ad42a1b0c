"""The terminal view of a running graph: per node its state and rates, per edge its queue.

Rules:
- Rates are computed from the cumulative counters every replica reports in its heartbeat,
  over the last refresh interval; nothing here talks to replicas.
- ``LiveView`` renders a rich table (refreshed a few times a second); ``QuietView`` prints one
  plain line every ``every_s`` seconds, for CI logs.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from areal_flow.graph import resolved_edges
from areal_flow.roles import TrainerSpec

if TYPE_CHECKING:
    from areal_flow.runtime.driver import Driver


class Rates:
    """batches/s per node from cumulative counters, over the last ``window_s`` seconds.

    A window, not the last heartbeat interval: a node that emits one batch every few seconds
    (a trainer, a generator of long rollouts) would otherwise show 0.0 most of the time.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._history: dict[str, deque[tuple[float, float]]] = defaultdict(deque)
        self.per_node: dict[str, float] = {}

    def update(self, driver: Driver) -> None:
        now = time.monotonic()
        totals: dict[str, float] = defaultdict(float)
        for replica in driver.replicas.values():
            # Sinks (and the trainer, whose only output is weights) are rated by what they take.
            counter = "batches_out" if _data_outputs(replica) else "batches_in"
            totals[replica.plan.node] += replica.metrics.get(counter, 0.0)
        for node, total in totals.items():
            history = self._history[node]
            history.append((now, total))
            while len(history) > 2 and now - history[1][0] >= self.window_s:
                history.popleft()  # the oldest kept sample is the last one before the window
            then, before = history[0]
            if now - then >= 0.5:
                self.per_node[node] = max(total - before, 0.0) / (now - then)


def _data_outputs(replica: Any) -> bool:
    return any(not wire.weights for wire in replica.plan.outputs)


class Progress:
    """Step, reward and its named metrics, staleness, tokens/s per node, elapsed and ETA.

    The ETA extrapolates the pace since the first optimizer step (start-up excluded)."""

    def __init__(self) -> None:
        self.first_step: tuple[float, int] | None = None

    def line(self, driver: Driver) -> str:
        now = time.monotonic()
        parts = [f"elapsed {_clock(now - driver.started)}", f"version {driver.version}"]
        trainers = (r for r in driver.replicas.values() if isinstance(r.spec, TrainerSpec))
        trainer = next(trainers, None)
        if trainer is not None:
            parts.extend(self._trainer(trainer, now))
        rates: dict[str, float] = defaultdict(float)
        for replica in driver.replicas.values():
            for key in ("gen_tokens_per_s", "tokens_per_s"):
                if key in replica.metrics:
                    rates[replica.plan.node] += replica.metrics[key]
        parts.extend(f"{node} {rate:,.0f} tok/s" for node, rate in rates.items())
        return "  ".join(parts)

    def _trainer(self, trainer: Any, now: float) -> list[str]:
        done = int(trainer.metrics.get("steps", 0))
        spec: TrainerSpec = trainer.spec
        total = spec.steps
        parts = [f"step {done}/{total}" if total else f"step {done}"]
        if done and self.first_step is None:
            self.first_step = (now, done)
        if self.first_step is not None and total and trainer.status == "running":
            since, first = self.first_step
            if done > first:
                parts.append(f"ETA {_clock((now - since) / (done - first) * (total - done))}")
        metrics = trainer.metrics
        shown = ["reward_mean", *sorted(k for k in metrics if k.startswith("reward/")), "lag_mean"]
        for key in (k for k in shown if k in metrics):
            label = {"reward_mean": "reward", "lag_mean": "lag"}.get(
                key, key.removeprefix("reward/")
            )
            parts.append(f"{label} {metrics[key]:.2f}")
        return parts


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def node_states(driver: Driver) -> dict[str, str]:
    """One word per node: the replicas' states, e.g. 'running' or 'running 1/2'."""
    by_node: dict[str, list[str]] = defaultdict(list)
    for replica in driver.replicas.values():
        by_node[replica.plan.node].append(replica.status)
    words = {}
    for node, states in by_node.items():
        common = max(set(states), key=states.count)
        words[node] = (
            common if len(set(states)) == 1 else f"{common} {states.count(common)}/{len(states)}"
        )
    return words


def edge_depths(driver: Driver) -> dict[int, float]:
    depths: dict[int, float] = defaultdict(float)
    for replica in driver.replicas.values():
        for key, value in replica.metrics.items():
            if key.startswith("edge.") and key.endswith(".depth"):
                depths[int(key.split(".")[1])] += value
    return depths


def render(driver: Driver, rates: Rates, status: str) -> Group:
    header = Text(f"{driver.graph.name}  run {driver.run_dir}", style="bold")
    nodes = Table(show_edge=False, pad_edge=False)
    for column in ("node", "kind", "state", "batches/s", "in", "out", "busy s", "restarts"):
        nodes.add_column(
            column, justify="right" if column not in ("node", "kind", "state") else "left"
        )
    states = node_states(driver)
    for spec in driver.graph.nodes:
        reps = [r for r in driver.replicas.values() if r.plan.node == spec.name]
        total: dict[str, float] = defaultdict(float)
        for r in reps:
            for key in ("batches_in", "batches_out", "busy_s"):
                total[key] += r.metrics.get(key, 0.0)
        nodes.add_row(
            spec.name,
            spec.kind,
            states.get(spec.name, "-"),
            f"{rates.per_node.get(spec.name, 0.0):.1f}",
            f"{total['batches_in']:.0f}",
            f"{total['batches_out']:.0f}",
            f"{total['busy_s']:.1f}",
            str(sum(r.restarts for r in reps)),
        )
    edges = Table(show_edge=False, pad_edge=False)
    for column in ("edge", "queue", "capacity"):
        edges.add_column(column)
    depths = edge_depths(driver)
    for edge in resolved_edges(driver.g):
        edges.add_row(edge.label, f"{depths.get(edge.index, 0):.0f}", str(edge.spec.capacity))
    parts: list[Text | Table] = [header, Text(status), nodes, edges]
    if driver.gate is not None:
        m = driver.gate.metrics()
        parts.append(
            Text(
                "staleness: "
                + "  ".join(f"{k}={v:g}" for k, v in m.items() if not k.startswith("lag"))
            )
        )
    return Group(*parts)


class LiveView:
    """A rich live table, refreshed at most ``hz`` times a second."""

    def __init__(self, console: Console, hz: float = 4.0) -> None:
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self.rates = Rates()
        self.progress = Progress()
        self.every = 1.0 / hz
        self._last = 0.0

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def __call__(self, driver: Driver) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.rates.update(driver)
        self.live.update(render(driver, self.rates, self.progress.line(driver)), refresh=True)


class QuietView:
    """One line every ``every_s`` seconds."""

    def __init__(self, console: Console, every_s: float = 10.0) -> None:
        self.console = console
        self.every_s = every_s
        self.rates = Rates()
        self.progress = Progress()
        self._last = time.monotonic()

    def __call__(self, driver: Driver) -> None:
        self.rates.update(driver)
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        states = node_states(driver)
        parts = [f"{n}:{states[n]}:{self.rates.per_node.get(n, 0):.1f}/s" for n in states]
        self.console.print(self.progress.line(driver) + "  |  " + " ".join(parts), highlight=False)
