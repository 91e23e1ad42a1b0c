"""Soak: a graph of function nodes at full speed for a given time; memory and queues watched.

The graph: an endless numbered source → a pass-through function node (2 replicas) → a
pass-through function node → a counting sink, every edge with capacity 4, all real processes
over real ZeroMQ. Every ``--every`` seconds the driver's view is sampled: each replica's RSS
(from its heartbeat) and every edge's queue depth. Goals: RSS growth < 10 % per replica from
the end of the warm-up (the first ``--warmup`` seconds: imports, allocator pools, socket
buffers) to the end; no queue ever above its capacity.

    python bench/soak.py [--minutes 20] [--every 10] [--warmup 60] [--payload 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from areal_flow.graph import resolved_edges
from areal_flow.runtime import run_graph
from areal_flow.spec import Edge, Graph
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig

CAPACITY = 4


def soak_graph(payload: int, batch_rows: int) -> Graph:
    return Graph(
        name="soak",
        nodes=[
            ListSourceConfig(name="src", count=None, batch_rows=batch_rows, payload_bytes=payload),
            FunctionConfig(name="fan", fn="areal_flow.testing:passthrough", replicas=2),
            FunctionConfig(name="join", fn="areal_flow.testing:passthrough"),
            CollectSinkConfig(name="sink", keep=False),
        ],
        edges=[
            Edge(src="src", dst="fan", capacity=CAPACITY),
            Edge(src="fan", dst="join", capacity=CAPACITY),
            Edge(src="join", dst="sink", capacity=CAPACITY),
        ],
    )


class Sampler:
    """Samples RSS and queue depths from the driver; interrupts the run at the deadline."""

    def __init__(self, seconds: float, every: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.every = every
        self.next_at = 0.0
        self.rss: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.depth_max: dict[str, float] = defaultdict(float)
        self.batches = 0.0
        self.started = time.monotonic()

    def __call__(self, driver: Any) -> None:
        now = time.monotonic()
        labels = {e.index: e.label for e in resolved_edges(driver.g)}
        for replica in driver.replicas.values():
            for key, value in replica.metrics.items():
                if key.startswith("edge.") and key.endswith(".depth"):
                    label = labels[int(key.split(".")[1])]
                    self.depth_max[label] = max(self.depth_max[label], value)
            if replica.plan.node == "sink":
                self.batches = replica.metrics.get("batches_in", self.batches)
        if now >= self.next_at:
            self.next_at = now + self.every
            for replica in driver.replicas.values():
                if "rss_mb" in replica.metrics:
                    self.rss[replica.key].append((now - self.started, replica.metrics["rss_mb"]))
            print(f"[{now - self.started:6.0f} s] {self.batches:,.0f} batches through", flush=True)
        if now >= self.deadline:
            driver.interrupt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=10.0, help="Sampling interval (s).")
    parser.add_argument("--warmup", type=float, default=60.0, help="Seconds before the baseline.")
    parser.add_argument("--payload", type=int, default=1024, help="Bytes per row.")
    parser.add_argument("--rows", type=int, default=64, help="Rows per batch.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the samples as JSON.")
    args = parser.parse_args()
    sampler = Sampler(args.minutes * 60, args.every)
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        result = run_graph(
            soak_graph(args.payload, args.rows), run_dir=Path(folder), on_update=sampler
        )
    elapsed = time.monotonic() - sampler.started
    table = Table(title=f"soak: {elapsed / 60:.1f} min, {sampler.batches / elapsed:,.0f} batches/s")
    for column in ("replica", f"RSS MiB at {args.warmup:.0f} s", "max", "end", "growth"):
        table.add_column(column, justify="left" if column == "replica" else "right")
    worst = 0.0
    for key, points in sorted(sampler.rss.items()):
        base = next((mb for t, mb in points if t >= args.warmup), points[0][1])
        end, top = points[-1][1], max(mb for _, mb in points)
        growth = (end - base) / base if base else 0.0
        worst = max(worst, growth)
        table.add_row(key, f"{base:.1f}", f"{top:.1f}", f"{end:.1f}", f"{growth:+.1%}")
    Console().print(table)
    queues = Table(title="queue depth (max seen) vs capacity")
    for column in ("edge", "max depth", "capacity"):
        queues.add_column(column)
    for label, depth in sorted(sampler.depth_max.items()):
        queues.add_row(label, f"{depth:.0f}", str(CAPACITY))
    Console().print(queues)
    over = [label for label, depth in sampler.depth_max.items() if depth > CAPACITY]
    verdict = "met" if worst < 0.10 and not over else "MISSED"
    print(f"goal (RSS growth < 10 %, queues within capacity): {verdict}; run {result.status}")
    if args.out is not None:
        args.out.write_text(json.dumps({"rss": sampler.rss, "depth_max": sampler.depth_max}))


if __name__ == "__main__":
    main()
