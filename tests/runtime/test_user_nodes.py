"""A node kind defined in the graph file runs like a built-in: validate, viz, run (in-process
and as real worker processes). Workers load the kind from the plan's references, not from the
registry. (The Ray launcher runs the same file in tests/ray/test_ray_launcher.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from areal_flow.loader import apply_overrides, load_graph
from areal_flow.runtime import run_graph
from areal_flow.testing import read_sink

GRAPH = Path(__file__).parent / "graphs" / "user_nodes.py"
SHOUTED = ["ASYNCHRONOUS!!", "DATAFLOW!!", "GRAPH!!", "OF!!", "USER!!", "NODES!!"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "areal_flow.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
    )


def test_validate_and_viz_know_the_kind_and_its_fields(tmp_path: Path) -> None:
    ok = cli("validate", str(GRAPH), "--set", "nodes.shout.suffix=wow", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "shout" in ok.stdout
    bad = cli("validate", str(GRAPH), "--set", "nodes.shout.colum=x", cwd=tmp_path)
    assert bad.returncode == 1 and "nodes.shout.colum" in bad.stderr
    assert "did you mean 'column'" in bad.stderr
    drawn = cli("viz", str(GRAPH), "-o", str(tmp_path / "g.mmd"), cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert "shout" in (tmp_path / "g.mmd").read_text()


@pytest.mark.parametrize("launcher", ["inprocess", "local"])
def test_a_node_defined_in_the_graph_file_runs(tmp_path: Path, launcher: str) -> None:
    graph = apply_overrides(load_graph(GRAPH), ["nodes.shout.column=word"])
    result = run_graph(graph, tmp_path, launcher=launcher)  # type: ignore[arg-type]
    assert result.ok, result.failure
    assert sorted(read_sink(tmp_path, "sink").column("word").to_pylist()) == sorted(SHOUTED)
    assert result.metrics["shout/0"]["shouted"] == len(SHOUTED)
    plan = json.loads((tmp_path / "plan.json").read_text())
    (module,) = plan["graph_modules"]
    assert plan["user_kinds"] == {"shout": f"{module}:ShoutConfig"}
    assert plan["graph_modules"][module] == str(GRAPH.resolve())


def test_the_cli_runs_it_as_processes(tmp_path: Path) -> None:
    done = cli("run", str(GRAPH), "-q", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shouted = read_sink(tmp_path / "run", "sink").column("word").to_pylist()
    assert sorted(shouted) == sorted(SHOUTED)
