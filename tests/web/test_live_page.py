"""The live page in headless Chromium during a real run of the math graph (tiny model).

Real worker processes, ZeroMQ, the HF engine, the trainer and the evaluator node; the page is
served by the same code ``areal-flow run`` uses and read back from the browser's DOM. With
``AREAL_FLOW_DOCS_SCREENSHOT=1`` the screenshot also replaces ``docs/web_view.png``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from areal_flow.graph import build, resolved_edges
from areal_flow.loader import load_graph
from areal_flow.web import live_view
from tests.faults.harness import ROOT, WatchedRun, math_overrides
from tests.web.browser import Browser, chromium_binary

pytestmark = pytest.mark.slow

PROMPTS = 64  # 16 steps: time to see everything move, then a kill and its restart

NODES_JS = """JSON.stringify([...document.querySelectorAll('g.node')].map(g => ({
  name: g.dataset.node, state: g.dataset.state, restarts: +g.dataset.restarts,
  moved: (+g.dataset.in || 0) + (+g.dataset.out || 0)})))"""
EDGES_JS = """JSON.stringify([...document.querySelectorAll('g.edge')].map(g => ({
  label: g.dataset.label, received: +g.dataset.received || 0})))"""
ALL_MOVING_JS = f"""(() => {{
  const nodes = JSON.parse({NODES_JS}), edges = JSON.parse({EDGES_JS});
  const evals = +(document.getElementById('eval-chart').dataset.points || 0);
  const steps = document.querySelectorAll('#charts .chart:first-child circle').length;
  return nodes.length > 0 && nodes.every(n => n.moved > 0) && edges.every(e => e.received > 0)
    && evals >= 2 && steps >= 3;  // curves with a few points: what the screenshot shows
}})()"""


def test_page_shows_every_node_and_edge_moving_and_a_killed_generator(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    chromium_binary()  # skips here, with the install command, when Chromium is missing
    overrides = [o for o in math_overrides(tiny_model_dir, PROMPTS) if not o.startswith("eval")]
    overrides += [
        "evaluation.every=2",
        "evaluation.every_problems=4",
        "evaluation.every_samples=1",
        "evaluation.base=false",
    ]
    graph = load_graph(ROOT / "graphs" / "math_rl.py", overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    feed, view = live_view(build(graph), run_dir)
    try:
        with WatchedRun(graph, run_dir, also=feed) as run, Browser() as browser:
            browser.open(view.url)
            what = "all nodes and edges moving, 3 steps, 2 held-out points"
            browser.wait_for(ALL_MOVING_JS, 180, what)
            shown = {n["name"] for n in browser.evaluate(f"JSON.parse({NODES_JS})")}
            assert shown == {n.name for n in graph.nodes}
            labels = [e["label"] for e in browser.evaluate(f"JSON.parse({EDGES_JS})")]
            assert labels == [e.label for e in resolved_edges(build(graph))]
            time.sleep(0.5)  # let the charts of the last event render
            shot = browser.screenshot(tmp_path / "web_view.png")
            if os.environ.get("AREAL_FLOW_DOCS_SCREENSHOT") == "1":
                shutil.copy(shot, ROOT / "docs" / "web_view.png")
            assert shot.stat().st_size > 20_000  # a drawn page, not a blank one

            run.kill("gen")
            killed = time.monotonic()
            browser.wait_for(
                "document.querySelector('g.node[data-node=\"gen\"]').dataset.restarts === '1'",
                2.0,
                "the generator's restart",
            )
            seen_after = time.monotonic() - killed
            label = browser.evaluate(
                "document.querySelector('g.node[data-node=\"gen\"] text.state').textContent"
            )
            assert "1 restart" in label, label
            print(f"kill -9 visible on the page after {seen_after:.2f} s")
            assert run.driver is not None
            run.driver.interrupt()
            result = run.finish()
            feed.finish(result.status)
        assert result.status in ("interrupted", "completed"), result.failure
    finally:
        view.stop()
    assert (run_dir / "web" / "snapshot.json").exists()  # what `areal-flow view` shows later
