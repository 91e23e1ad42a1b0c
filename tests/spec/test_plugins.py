"""Third-party node kinds through the ``areal_flow.nodes`` entry-point group (a real dist-info)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.spec.conftest import ROOT

PLUGIN = '''
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from areal_flow.node import Transform
from areal_flow.spec import NodeSpec, Port


class ShoutConfig(NodeSpec):
    """Upper-cases a text column."""

    inputs: ClassVar[dict[str, Port]] = {"in": Port(record="any")}
    outputs: ClassVar[dict[str, Port]] = {"out": Port(record="any")}
    kind: Literal["shout"] = "shout"
    column: str = Field("text", description="Column to upper-case.")


class Shout(Transform[ShoutConfig]):
    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch
'''


def install_plugin(site: Path) -> None:
    (site / "shout_plugin.py").write_text(PLUGIN)
    info = site / "shout_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[areal_flow.nodes]\nshout = shout_plugin:ShoutConfig\n")


def test_plugin_kind_validates_and_draws(tmp_path: Path) -> None:
    install_plugin(tmp_path)
    graph = tmp_path / "g.yaml"
    graph.write_text(
        textwrap.dedent(
            """
            name: plug
            nodes:
              - {kind: list_source, name: src, count: 3}
              - {kind: shout, name: loud, column: text}
              - {kind: collect_sink, name: sink}
            edges: ["src -> loud", "loud -> sink"]
            """
        )
    )
    env_path = f"{tmp_path}:{ROOT}"
    ok = subprocess.run(
        [sys.executable, "-m", "areal_flow.cli", "validate", str(graph)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin"},
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert "│ loud " in ok.stdout and "shout" in ok.stdout
    graph.write_text(graph.read_text().replace("column: text", "colum: text"))
    bad = subprocess.run(
        [sys.executable, "-m", "areal_flow.cli", "validate", str(graph)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin"},
        cwd=ROOT,
    )
    assert bad.returncode == 1
    assert "nodes.loud.colum" in bad.stderr and "did you mean 'column'" in bad.stderr
