"""The CLI as a user runs it: real subprocesses, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.spec.conftest import ROOT

MATH = ROOT / "graphs" / "math_rl.py"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "areal_flow.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_validate_math_graph_shows_six_nodes() -> None:
    result = cli("validate", MATH)
    assert result.returncode == 0, result.stderr
    for name in ("prompts", "gen", "reward", "filter", "trainer", "publisher"):
        assert f"│ {name} " in result.stdout
    assert "publisher.weights -> gen.weights" in result.stdout
    assert "valid" in result.stdout


@pytest.mark.parametrize("suffix", [".png", ".svg", ".dot", ".mmd"])
def test_viz_writes_a_drawing(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"g{suffix}"
    result = cli("viz", MATH, "-o", out)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG") and len(data) > 20_000
    elif suffix == ".svg":
        text = data.decode()
        for name in ("prompts", "gen", "reward", "filter", "trainer", "publisher"):
            assert name in text
        assert "stroke-dasharray" in text  # the dashed weight edges
    elif suffix == ".dot":
        assert '"publisher" -> "gen"' in data.decode() and "style=dashed" in data.decode()
    else:
        assert "publisher -.->" in data.decode()


def test_viz_rejects_unknown_format(tmp_path: Path) -> None:
    result = cli("viz", MATH, "-o", tmp_path / "g.jpg")
    assert result.returncode == 1
    assert ".svg" in result.stderr and "Traceback" not in result.stderr


def _write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    elif name.endswith(".json"):
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_and_json_files_validate(tmp_path: Path, math_data: dict[str, Any]) -> None:
    for name in ("g.yaml", "g.json"):
        result = cli("validate", _write(tmp_path, name, math_data))
        assert result.returncode == 0, result.stderr


def test_python_file_with_build_graph(tmp_path: Path) -> None:
    source = MATH.read_text().replace("graph = Graph(", "def build_graph():\n    return Graph(")
    result = cli("validate", _write(tmp_path, "built.py", source))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--set", "nodes.gen.sampling.tempreature=0.3"], "nodes.gen.sampling.tempreature"),
        (["--set", "nodes.trainer.resources.gpus=8"], "nodes.trainer.resources.gpus"),
        (["--set", "nodes.gen.kind=genrator"], "did you mean 'generator'"),
        (["--set", "badly"], "path.to.field=value"),
    ],
)
def test_bad_override_exits_1_without_traceback(args: list[str], text: str) -> None:
    result = cli("validate", MATH, *args)
    assert result.returncode == 1
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_broken_yaml_reports_all_problems(tmp_path: Path, math_data: dict[str, Any]) -> None:
    math_data["nodes"][1]["tempreature"] = 1.0
    math_data["edges"].append("gen -> nowhere")
    math_data["launcher"] = "k8s"
    result = cli("validate", _write(tmp_path, "bad.yaml", math_data))
    assert result.returncode == 1
    assert "nodes.gen.tempreature" in result.stderr and "launcher" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_python_file_names_the_line(tmp_path: Path) -> None:
    source = MATH.read_text().replace("group_size=GROUP_SIZE", "group_size=-3")
    result = cli("validate", _write(tmp_path, "bad.py", source))
    assert result.returncode == 1
    assert "bad.py:" in result.stderr and "group_size" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "text"),
    [
        ("missing.py", None, "no such file"),
        ("g.txt", "x", "unknown graph file type"),
        ("empty.py", "x = 1\n", "neither 'graph' nor 'build_graph()'"),
        ("crash.py", "raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("bad.yaml", "name: [unclosed", "not valid yaml"),
        ("list.json", "[1, 2]", "must be a mapping"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: str | None, text: str) -> None:
    path = tmp_path / name if content is None else _write(tmp_path, name, content)
    result = cli("validate", path)
    assert result.returncode == 1
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
