"""graphs/custom_reward.py: a reward function and a node defined in the graph file, run for real.

In-process (every replica a task, the reward's worker processes spawned) and through the CLI
(every replica a process); the reward's named metrics reach the step log and MLflow by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from areal_flow.loader import load_graph
from areal_flow.runtime import run_graph
from areal_flow.train.steplog import read_steps
from tests.e2e.tiny import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "custom_reward.py"
NAMED = ("reward/correct", "reward/brevity", "reward/words")

pytestmark = pytest.mark.slow


def mlflow_metrics(run_dir: Path, experiment_name: str = "custom_reward") -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    return dict(run.data.metrics)


def test_in_process_with_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    graph = load_graph(GRAPH, tiny_overrides(tiny_model_dir))
    result = run_graph(graph, tmp_path, launcher="inprocess")
    assert result.ok, result.failure
    steps = read_steps(tmp_path)
    assert len(steps) == 2
    for name in NAMED:
        assert name in steps[-1], (name, sorted(steps[-1]))
    assert steps[-1]["reward/words"] > 0  # the file's own node counted them
    assert result.metrics["reward/0"]["verdict_no_answer"] > 0


def test_cli_run_logs_the_metrics_by_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "areal_flow.cli", "run", str(GRAPH), "-q"]
    command += ["--run-dir", str(run_dir)]
    command += [a for item in tiny_overrides(tiny_model_dir) for a in ("--set", item)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = mlflow_metrics(run_dir)
    for name in NAMED:
        assert name in metrics, (name, sorted(metrics))
