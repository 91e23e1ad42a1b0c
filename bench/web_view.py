"""What the live web view costs the driver's process: CPU share with a browser-like client.

Runs the same light graph (an endless numbered source, two replicas of a function node, a
function node, a sink: six replicas in their own processes) twice for ``--seconds`` each:
- baseline: the driver with no web view,
- web: the driver feeding ``web.LiveFeed`` (4 snapshots/s) and the server thread serving one
  SSE client (``curl -N``, a separate process, like a browser tab).
It prints, per run, the driver process's CPU (all its threads, % of one core), and for the web
run the feed callbacks' time in the driver thread and the server thread's CPU (psutil's
per-thread times), each as % of one core over the same wall time, with the difference to the
baseline measured in the same invocation. The issue's budget: the web view ≤ 2 % of one core.

    python bench/web_view.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from areal_flow.graph import build
from areal_flow.runtime import Driver, run_graph
from areal_flow.spec import Graph
from areal_flow.web import live_view

WARMUP_S = 5.0  # replicas start, the first rates fill in


def light_graph() -> Graph:
    """Six light replicas, rows flowing steadily, no model."""
    from areal_flow.loader import validate_data

    fn = "tests.runtime.fns:double"
    return validate_data(
        {
            "name": "web_bench",
            "nodes": [
                {"kind": "list_source", "name": "src", "count": None, "batch_rows": 16},
                {"kind": "function", "name": "a", "fn": fn, "replicas": 2},
                {"kind": "function", "name": "b", "fn": "tests.runtime.fns:tag_pid"},
                {"kind": "function", "name": "c", "fn": "tests.runtime.fns:tag_pid"},
                {"kind": "collect_sink", "name": "sink"},
            ],
            "edges": ["src -> a", "a -> b", "b -> c", "c -> sink"],
            "tracking": {"enabled": False},
        }
    )


class Timed:
    """Wraps a driver callback and sums the time it takes."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.spent = 0.0

    def __call__(self, driver: Driver) -> None:
        began = time.perf_counter()
        self.callback(driver)
        self.spent += time.perf_counter() - began


def measure(seconds: float, web: bool) -> dict[str, float]:
    graph = light_graph()
    with tempfile.TemporaryDirectory(prefix="web-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        seen: list[Driver] = []
        feed = view = client = None
        timed = None
        if web:
            feed, view = live_view(build(graph), run_dir)
            timed = Timed(feed)

        def update(driver: Driver) -> None:
            if not seen:
                seen.append(driver)
            if timed is not None:
                timed(driver)

        thread = threading.Thread(target=lambda: run_graph(graph, run_dir, on_update=update))
        thread.start()
        try:
            if view is not None:
                events = view.url.replace("/?token=", "/api/events?token=")
                client = subprocess.Popen(
                    ["curl", "-sN", events], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            time.sleep(WARMUP_S)
            me = psutil.Process()
            web_thread = view._thread.native_id if view is not None and view._thread else None
            cpu0, wall0 = me.cpu_times(), time.monotonic()
            feed0 = timed.spent if timed is not None else 0.0
            server0 = _thread_cpu(me, web_thread)
            time.sleep(seconds)
            cpu1, wall1 = me.cpu_times(), time.monotonic()
            wall = wall1 - wall0
            out = {
                "process_pct": 100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall,
                "feed_pct": 100 * ((timed.spent if timed else 0.0) - feed0) / wall,
                "server_pct": 100 * (_thread_cpu(me, web_thread) - server0) / wall,
            }
        finally:
            if seen:
                seen[0].interrupt()
            thread.join(120)
            if client is not None:
                client.terminate()
                client.wait(10)
            if view is not None:
                view.stop()
    return out


def _thread_cpu(process: psutil.Process, native_id: int | None) -> float:
    if native_id is None:
        return 0.0
    for thread in process.threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    base = measure(args.seconds, web=False)
    web = measure(args.seconds, web=True)
    print(f"driver process CPU, no web view : {base['process_pct']:5.2f} % of one core")
    print(f"driver process CPU, web view on : {web['process_pct']:5.2f} % of one core")
    print(f"  difference                    : {web['process_pct'] - base['process_pct']:+5.2f} %")
    print(f"  LiveFeed in the driver thread : {web['feed_pct']:5.2f} %")
    print(f"  web server thread (1 client)  : {web['server_pct']:5.2f} %")
    print(f"  web view total (feed + server): {web['feed_pct'] + web['server_pct']:5.2f} %")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
