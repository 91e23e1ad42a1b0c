"""The runtime: plan a graph, start its replicas, watch them, stop them.

``run_graph`` is the one entry point (the CLI's ``run`` and the in-process test runner use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from areal_flow.evaluation import with_evaluator
from areal_flow.graph import Machine, build
from areal_flow.registry import use_kinds
from areal_flow.runtime.control import STUCK_AFTER_S
from areal_flow.runtime.driver import Driver, Failure, RunResult
from areal_flow.runtime.launcher import InProcessLauncher, Launcher, LocalLauncher
from areal_flow.runtime.resume import ResumeError, resume_point
from areal_flow.spec import Graph

__all__ = ["Driver", "Failure", "ResumeError", "RunResult", "new_run_dir", "run_graph"]


def new_run_dir(graph: Graph) -> Path:
    """A fresh folder under the graph's ``run_dir``: ``<name>-<YYYYmmdd-HHMMSS>[-n]``."""
    base = graph.run_dir / f"{graph.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_graph(
    graph: Graph,
    run_dir: Path | None = None,
    launcher: Literal["local", "inprocess", "ray"] | None = None,
    on_update: Callable[[Driver], None] | None = None,
    max_restarts: int = 3,
    resume: bool = False,
    stuck_after_s: float = STUCK_AFTER_S,
) -> RunResult:
    """Run ``graph`` until it completes, fails, or Ctrl-C drains it.

    ``launcher`` defaults to the graph's own; 'ray' places the graph on a Ray cluster first
    and raises ``GraphInvalid`` when the cluster cannot hold it. ``resume`` continues the run
    in ``run_dir`` from its latest checkpoint (``ResumeError`` when it has none).
    ``stuck_after_s``: a running replica silent this long is reported stuck.
    """
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to continue")
    point = resume_point(run_dir) if resume and run_dir is not None else None
    graph = with_evaluator(graph)  # evaluation.every: the evaluator node (idempotent)
    kind = launcher or graph.launcher
    if kind != "inprocess" and kind != graph.launcher:
        graph = graph.model_copy(update={"launcher": kind})  # placement is checked per launcher
    use_kinds(graph)  # node kinds defined outside the registry (a graph file, a test module)
    g = build(graph, Machine.detect())
    run_dir = run_dir or new_run_dir(graph)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "graph.json").write_text(graph.model_dump_json(indent=2))
    with _launcher(kind, graph, run_dir) as chosen:
        driver = Driver(graph, g, run_dir, chosen, max_restarts, on_update, point, stuck_after_s)
        return asyncio.run(_run_with_sigint(driver))


def _launcher(
    kind: str, graph: Graph, run_dir: Path
) -> contextlib.AbstractContextManager[Launcher]:
    """The launcher for ``kind``, as a context that frees what it holds (a Ray cluster's)."""
    if kind == "ray":
        from areal_flow.runtime.ray_launcher import RayLauncher

        return RayLauncher(graph, run_dir)
    return contextlib.nullcontext(InProcessLauncher() if kind == "inprocess" else LocalLauncher())


async def _run_with_sigint(driver: Driver) -> RunResult:
    loop = asyncio.get_running_loop()
    # Off the main thread (a test running the driver in a thread) there are no signals to catch.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, driver.interrupt)
        loop.add_signal_handler(signal.SIGTERM, driver.interrupt)
    try:
        return await driver.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
