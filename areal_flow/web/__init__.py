"""The live web view of a run (``areal-flow run`` serves it; ``areal-flow view`` replays one).

``snapshot.py`` turns the driver's memory into JSON, ``runfiles.py`` reads the run folder,
``server.py`` serves both (Starlette + uvicorn, server-sent events) and ``static/`` holds the
page (HTML, JS and CSS in the package: no internet needed).
"""

from __future__ import annotations

import time
from pathlib import Path

import networkx as nx

from areal_flow.web.server import WebView, load_saved
from areal_flow.web.snapshot import LiveFeed, layout

__all__ = ["LiveFeed", "WebView", "finished_view", "live_view"]


def live_view(g: nx.MultiDiGraph, run_dir: Path) -> tuple[LiveFeed, WebView]:
    """A feed for the driver's ``on_update`` and the started server that shows it."""
    feed = LiveFeed()
    view = WebView(run_dir, layout(g), feed=feed, t0=time.time())
    view.start()
    return feed, view


def finished_view(g: nx.MultiDiGraph, run_dir: Path, port: int = 0) -> WebView:
    """A started server for a run folder's files (its last saved snapshot, curves, logs)."""
    plan = run_dir / "plan.json"
    t0 = plan.stat().st_mtime if plan.exists() else None
    view = WebView(run_dir, layout(g), saved=load_saved(run_dir), t0=t0, port=port)
    view.start()
    return view
