"""The web view's server on a run folder's files: token, layout, the event stream, logs.

No run here: a run folder is written by hand (graph.json, step log, held-out points, a log,
the snapshot a live view saves), then served by ``areal-flow view``'s code on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest

from areal_flow.graph import build
from areal_flow.loader import load_graph
from areal_flow.viz import layered_positions
from areal_flow.web import finished_view
from areal_flow.web.server import WebView
from areal_flow.web.snapshot import layout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    graph = load_graph(ROOT / "graphs" / "math_rl.py", [])
    (tmp_path / "graph.json").write_text(graph.model_dump_json())
    (tmp_path / "metrics").mkdir()
    start = 1_000_000.0
    with (tmp_path / "metrics" / "steps.jsonl").open("w") as out:
        for step in range(1, 4):
            out.write(json.dumps({"step": step, "time": start + step, "reward_mean": step / 10}))
            out.write("\n")
        out.write('{"step": 4, "time"')  # torn: the writer is mid-line
    record = {"step": 2, "time": start + 2.5, "eval/pass1": 0.25, "problems": 8, "samples": 2}
    (tmp_path / "metrics" / "eval.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "gen.0.log").write_text("line one\nline two\n")
    (tmp_path / "web").mkdir()
    nodes = {n.name: {"state": "finished", "in": 5, "out": 5, "restarts": 0} for n in graph.nodes}
    (tmp_path / "web" / "snapshot.json").write_text(
        json.dumps({"seq": 7, "status": "completed", "nodes": nodes, "edges": {}, "lag": {}})
    )
    return tmp_path


@pytest.fixture
def served(run_folder: Path) -> Iterator[WebView]:
    graph = load_graph(run_folder / "graph.json", [])
    view = finished_view(build(graph), run_folder)
    yield view
    view.stop()


def get(url: str) -> bytes:
    with urlopen(url, timeout=10) as reply:
        return bytes(reply.read())


def events(view: WebView, wanted: int, timeout: float = 10) -> list[tuple[str, dict]]:
    """The first ``wanted`` events of the stream, as (name, data)."""
    found: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    with urlopen(f"http://127.0.0.1:{view.port}/api/events?token={view.token}", timeout=10) as s:
        name = ""
        while len(found) < wanted and time.monotonic() < deadline:
            line = s.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                found.append((name, json.loads(line.removeprefix("data: "))))
    return found


def test_every_route_but_static_assets_needs_the_token(served: WebView) -> None:
    base = f"http://127.0.0.1:{served.port}"
    assert served.url.startswith(base + "/?token=")
    for path in ("/", "/api/layout", "/api/events", "/api/logs/gen"):
        with pytest.raises(HTTPError) as denied:
            get(base + path + "?token=wrong")
        assert denied.value.code == 403, path
    assert b'<svg id="graph"' in get(served.url)
    assert b"EventSource" in get(base + "/static/app.js")  # served from the package


def test_layout_is_the_viz_drawing(served: WebView, run_folder: Path) -> None:
    data = json.loads(get(f"http://127.0.0.1:{served.port}/api/layout?token={served.token}"))
    g = build(load_graph(run_folder / "graph.json", []))
    assert data == layout(g)
    positions = layered_positions(g)
    assert {n["name"]: (n["x"], n["y"]) for n in data["nodes"]} == positions
    weights = [e["label"] for e in data["edges"] if e["weights"]]
    assert weights == ["trainer.weights -> publisher.weights", "publisher.weights -> gen.weights"]


def test_event_stream_sends_the_saved_state_and_the_curves(served: WebView) -> None:
    (first, files), (second, state) = events(served, 2)
    assert (first, second) == ("files", "state")
    assert [p[0] for p in files["curves"]["reward_mean"]] == [1, 2, 3]  # torn line skipped
    assert [p[2] for p in files["curves"]["reward_mean"]] == [0.1, 0.2, 0.3]
    (point,) = files["evals"]
    assert point["eval/pass1"] == 0.25 and point["step"] == 2 and point["wall_s"] >= 0
    assert state["status"] == "completed" and state["nodes"]["gen"]["in"] == 5


def test_logs_of_a_node(served: WebView) -> None:
    url = f"http://127.0.0.1:{served.port}/api/logs/gen?token={served.token}"
    assert json.loads(get(url)) == {"gen/0": ["line one", "line two"]}
    with pytest.raises(HTTPError) as missing:
        get(url.replace("/gen?", "/nope?"))
    assert missing.value.code == 404


@pytest.mark.slow  # a CLI process: its imports take seconds on a loaded machine
def test_areal_flow_view_serves_a_run_folder_until_ctrl_c(run_folder: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "areal_flow.cli", "view", str(run_folder)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", line)
        assert found, line
        assert b'<svg id="graph"' in get(found.group(0))
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0


def test_view_of_a_folder_without_a_graph_says_so(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from areal_flow.cli import app

    result = CliRunner().invoke(app, ["view", str(tmp_path)])
    assert result.exit_code == 1
    assert "no graph.json here" in result.output
