"""graphs/tool_math.py end to end through the CLI on the tiny model: episodes with a
calculator in training and in the held-out evaluation, their metrics in MLflow by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from areal_flow.train.steplog import read_steps
from tests.e2e.test_custom_reward import mlflow_metrics
from tests.e2e.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "tool_math.py"
EPISODE_METRICS = ("episode/tool_calls", "episode/used_tools", "episode/turns")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_cli_run_trains_and_evaluates_tool_episodes(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        tiny_model_dir,
        **{"evaluation.problems": 3, "evaluation.samples": 2, "evaluation.k": 2},
    )
    command = [sys.executable, "-m", "areal_flow.cli", "run", str(GRAPH), "-q"]
    command += ["--run-dir", str(run_dir)]
    command += [a for item in overrides for a in ("--set", item)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["AREAL_FLOW_EVAL_CACHE"] = str(tmp_path / "evals")
    done = subprocess.run(command, capture_output=True, text=True, timeout=1400, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    steps = read_steps(run_dir)
    assert len(steps) == 2
    for name in EPISODE_METRICS:
        assert name in steps[-1], (name, sorted(steps[-1]))
    assert steps[-1]["episode/turns"] >= 1.0
    metrics = mlflow_metrics(run_dir, "tool_math")
    for name in EPISODE_METRICS:
        assert name in metrics, (name, sorted(metrics))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_settings"]["episode"]["fn"].endswith(":solve")
    assert summary["eval_settings"]["prompt_format"]["examples"], "examples reach evaluation"
    for scores in (summary["base"], summary["final"]):
        assert "episode/tool_calls" in scores and scores["pass@1"]["all"] >= 0.0
