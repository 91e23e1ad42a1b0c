"""scripts/gpu_check.py: its CPU dry run goes through the whole pipeline (gpu tests collected,
math_rl shortened on the tiny model, the table); without a GPU and without the flag it stops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert found["steps"] == 2 and found["steps_per_s"] > 0
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
