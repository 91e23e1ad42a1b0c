"""The main job, shortened: graphs/math_rl.py through the real CLI with a tiny model.

Everything is real (processes, ZeroMQ, Arrow, the HF engine, MLflow's SQLite store); only the
model is a 2-layer random Llama and the step budget is 3, so it runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    model = str(tiny_model_dir)
    overrides = {
        "nodes.prompts.model": model,
        "nodes.gen.model": model,
        "nodes.gen.engine": "hf",
        "nodes.gen.sampling.max_tokens": "16",
        "nodes.trainer.model": model,
        "nodes.trainer.steps": "3",
        "nodes.trainer.samples_every": "2",
        # A random model earns no reward: keep its (uniform) groups so steps happen.
        "nodes.filter.drop_uniform_reward": "false",
        "evaluation.problems": "6",
        "evaluation.samples": "2",
        "evaluation.k": "2",
        "evaluation.every": "1",  # the evaluator node: held-out points during training
        "evaluation.every_problems": "4",
        "evaluation.every_samples": "1",
    }
    command = [sys.executable, "-m", "areal_flow.cli", "run", "graphs/math_rl.py", "-q"]
    command += ["--run-dir", str(run_dir)]
    command += [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "AREAL_FLOW_EVAL_CACHE": str(run_dir.parent / "evals")}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: SQLite in the run folder
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "run summary" in result.stdout and "mlflow ui --backend-store-uri" in result.stdout
    assert "live view: http://127.0.0.1:" in result.stdout and "?token=" in result.stdout
    # Resuming the finished run (nothing left to train) continues the same MLflow run.
    resumed = subprocess.run(
        [*command[:6], "--resume", str(run_dir), *command[8:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return run_dir


def test_metrics_and_artifacts_land_in_mlflow(finished_run: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{finished_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("math_rl")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])  # the resume reused it
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert run.data.params["nodes.trainer.steps"] == "3"
    graph = json.loads((finished_run / "graph.json").read_text())  # the spec as it ran
    assert run.data.params["staleness.max_lag"] == str(graph["staleness"]["max_lag"])
    names = ("reward_mean", "reward/correct", "reward/format_ok", "loss", "clip_frac")
    for name in (*names, "iw_mean", "publish_block_s"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
    assert "eval/final/pass_1/all" in run.data.metrics
    assert any(k.startswith("queue/") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"graph.json", "graph.png", "summary.json", "samples"} <= artifacts
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert "samples/step_000002.jsonl" in samples
    assert run.data.tags["checkpoint"].endswith("step_3")
    # A short name from the overrides, so runs of one graph read apart in `mlflow ui`.
    assert run.info.run_name == "model=model engine=hf max_tokens=16 steps=3 samples_every=2"
    for node in ("gen", "trainer", "reward"):
        assert run.data.metrics[f"system/{node}/rss_mb"] > 10, node
        assert f"system/{node}/cpu_percent" in run.data.metrics


def test_held_out_points_during_training_land_in_mlflow(finished_run: Path) -> None:
    from mlflow import MlflowClient

    points = [json.loads(line) for line in (finished_run / "metrics" / "eval.jsonl").open()]
    assert len(points) >= 3 and points[0]["step"] == 0  # the initial policy, then versions 1, 2…
    assert [p["step"] for p in points] == sorted({p["step"] for p in points})
    assert all(0 <= p["eval/pass1"] <= 1 and p["problems"] == 4 for p in points)
    client = MlflowClient(f"sqlite:///{finished_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("math_rl")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "eval/pass1")
    assert [m.step for m in history] == [p["step"] for p in points]  # once each, resume or not
    assert [m.timestamp for m in history] == [int(p["time"] * 1000) for p in points]


def test_logged_model_generates_text_with_mlflow_transformers(finished_run: Path) -> None:
    import mlflow
    import mlflow.transformers
    from mlflow import MlflowClient

    uri = f"sqlite:///{finished_run / 'mlflow.db'}"
    experiment = MlflowClient(uri).get_experiment_by_name("math_rl")
    assert experiment is not None
    (run,) = MlflowClient(uri).search_runs([experiment.experiment_id])
    assert run.data.tags["model"] == f"runs:/{run.info.run_id}/model"
    mlflow.set_tracking_uri(uri)
    try:
        pipeline = mlflow.transformers.load_model(run.data.tags["model"])
    finally:
        mlflow.set_tracking_uri("")
    (out,) = pipeline("1 + 1 =", max_new_tokens=5, do_sample=False)
    assert out["generated_text"].startswith("1 + 1 =") and len(out["generated_text"]) > 7


def test_final_checkpoint_loads_in_plain_transformers(finished_run: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["trajectories"] == 3 * 4 * 8
    blocked = summary["weight_path_s"]
    assert 0 < blocked["publish_block_s/mean"] <= blocked["publish_block_s/max"]
    checkpoint = Path(summary["checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer("1 + 1 =", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()
    assert set(summary["final"]["pass@1"]) >= {"all"}
