"""The README's "Write your own reward" example is a working graph file, run for real.

The python block after the ``readme-example`` marker is written to a file as it stands, checked
by ``areal-flow validate`` (a real process), then run in-process with the tiny model: the
reward function's named metrics must reach the step log as ``reward/<name>``. Editing the
README block so that it no longer validates or runs fails this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from areal_flow.loader import load_graph
from areal_flow.runtime import run_graph
from areal_flow.train.steplog import read_steps
from tests.e2e.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-example:"
NAMED = ("reward/correct", "reward/words")  # the metrics the README's score() returns

pytestmark = pytest.mark.slow


def readme_example() -> str:
    """The python block that follows the marker under "Write your own reward"."""
    text = (ROOT / "README.md").read_text()
    section = text.partition("## Write your own reward")[2]
    assert section, "README.md has no '## Write your own reward' section"
    assert MARKER in section, f"the reward section lost its {MARKER!r} marker"
    after = section.partition(MARKER)[2]
    block = re.match(r"[^\n]*-->\s*\n```python\n(.*?)\n```", after, re.DOTALL)
    assert block is not None, "no ```python block right after the marker"
    return block.group(1) + "\n"


def test_the_readme_reward_example_validates_and_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    graph_file = tmp_path / "my_reward.py"
    graph_file.write_text(readme_example())

    done = subprocess.run(
        [sys.executable, "-m", "areal_flow.cli", "validate", str(graph_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "✓ valid" in done.stdout
    assert "reward" in done.stdout  # the reward node kind is listed

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    graph = load_graph(graph_file, tiny_overrides(tiny_model_dir))
    assert graph.node("reward").fn.endswith(":score")  # type: ignore[attr-defined]
    result = run_graph(graph, tmp_path / "run", launcher="inprocess")
    assert result.ok, result.failure
    steps = read_steps(tmp_path / "run")
    assert len(steps) == 2
    for name in NAMED:
        assert name in steps[-1], (name, sorted(steps[-1]))
    assert steps[-1]["reward/words"] > 0  # the function saw the responses
    assert not any(k.startswith("failed_") for k in result.metrics["reward/0"]), result.metrics
