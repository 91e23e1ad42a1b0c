"""scripts/gpu_check.py: its CPU dry run goes through the whole pipeline (gpu tests collected,
math_rl shortened on the tiny model, the table); without a GPU and without the flag it stops."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from areal_flow.loader import load_graph

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
LABELS = ("tokens/s gen", "publish → active", "steps/s", "held-out pass@1 before", "after")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_dry_run_builds_the_table_from_a_real_run(tmp_path: Path) -> None:
    done = check("--cpu-dry-run", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    found = json.loads((tmp_path / "run" / "gpu_check.json").read_text())
    assert found["device"] == "cpu (dry run)" and found["status"] == "completed"
    assert found["steps"] == 4 and found["steps_per_s"] > 0
    assert found["tokens_per_s"]["gen"] > 0 and found["publish_to_active_max_s"] > 0
    assert 0 <= found["held_out_base_pass1"] <= 1 and 0 <= found["held_out_final_pass1"] <= 1
    assert "tests collected" in found["tests"]  # the gpu-marked tests exist and import
    for label in LABELS:
        assert label in done.stdout, label


def test_without_a_gpu_it_says_so_and_runs_nothing() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = check()
    assert done.returncode == 2
    assert "no CUDA GPU here" in done.stdout and "--cpu-dry-run" in done.stdout


def test_on_cuda_it_undoes_math_rl_s_cpu_choices() -> None:
    """math_rl's eager engine suits one CPU core; the GPU check runs the graph with CUDA
    graphs, on the GPU."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = load_graph(ROOT / "graphs" / "math_rl.py", module.overrides(1, 2, 0.3, None))
    gen = graph.node("gen")
    assert gen.resources.gpus == 0.5 and graph.node("trainer").resources.gpus == 0.5
    assert gen.eager is False  # type: ignore[attr-defined]
