"""kill -9 of a stateful node (trainer, prompt source) stops the run with its name; ``areal-flow
run --resume`` continues it from the latest checkpoint, and the ledger proves that no prompt of
the epoch was lost and none trained twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from areal_flow.runtime.resume import resume_point
from areal_flow.train.checkpoint import data_position
from areal_flow.train.steplog import read_steps
from tests.faults.harness import (
    ROOT,
    WatchedRun,
    assert_epoch_trained_exactly_once,
    checkpoint_meta,
    epoch_groups,
    ledger_events,
    math_graph,
    math_overrides,
    trained_groups,
)

PROMPTS = 16  # 4 steps of 4 groups, a checkpoint after each


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "areal_flow.cli", "run", "graphs/math_rl.py", "-q", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.slow
def test_trainer_and_source_crashes_resume_to_every_prompt_trained_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    graph = math_graph(tiny_model_dir, PROMPTS)
    epoch = epoch_groups(graph)

    # 1. The trainer dies after its second checkpoint: the run stops and names it.
    with WatchedRun(graph, tmp_path) as run:
        run.wait("a second checkpoint", lambda d: checkpointed(tmp_path) >= 2)
        run.kill("trainer")
        result = run.finish()
    assert result.status == "failed" and result.failure is not None
    assert result.failure.node == "trainer" and "code -9" in result.failure.reason
    # Nothing lost: each prompt is in the checkpoint or will be issued again on resume.
    point = resume_point(tmp_path)
    held = set(data_position(tmp_path).held)
    assert held <= epoch and held, "the checkpoint holds groups of the epoch"
    assert set(trained_groups(tmp_path)) <= held

    # 2. Resumed, the prompt source dies mid-run: again the run stops and names it.
    with WatchedRun(graph, tmp_path, resume=True) as run:
        run.wait("the resumed source issuing", lambda d: run.running("gen"))
        run.kill("prompts")
        result = run.finish()
    assert result.failure is not None and result.failure.node == "prompts"
    restarted = [e for e in ledger_events(tmp_path, "start") if e["resumed_from"]]
    assert restarted[0]["resumed_from"] == str(point.checkpoint)
    assert restarted[0]["version"] == point.version

    # 3. Resumed through the CLI, the run completes: every prompt trained exactly once.
    second = data_position(tmp_path)
    done = cli("--resume", str(tmp_path), *sets(tiny_model_dir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"step {second.step}, policy version {second.version}" in done.stdout
    assert checkpoint_meta(tmp_path)["step"] == PROMPTS // 4
    assert_epoch_trained_exactly_once(tmp_path, graph)
    # The summary counts the final lineage; steps redone after a resume are reported apart.
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = read_steps(tmp_path)
    assert (summary["steps"], summary["trajectories"]) == (PROMPTS // 4, PROMPTS * 4)
    assert summary["redone_steps"] == len(records) - PROMPTS // 4
    # The resumed sources skipped what the checkpoints held: no group was issued again after
    # a resume if the checkpoint it resumed from already held it.
    for checkpoint, issued in issued_after_each_resume(tmp_path).items():
        kept = set(data_position(checkpoint).held)
        assert not issued & kept, f"re-issued groups {checkpoint} already held: {issued & kept}"


def test_resume_of_a_folder_without_checkpoint_names_it(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    proc = cli("--resume", str(tmp_path), timeout=60)
    assert proc.returncode == 1
    message = " ".join(proc.stderr.split())
    assert f"cannot resume {tmp_path}: it holds no checkpoint" in message, proc.stderr


def checkpointed(run_dir: Path) -> int:
    """The step of the run's latest checkpoint (0 before the first)."""
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().strip()[5:]) if latest.is_file() else 0


def sets(model: Path) -> list[str]:
    return [arg for item in math_overrides(model, PROMPTS) for arg in ("--set", item)]


def issued_after_each_resume(run_dir: Path) -> dict[Path, set[str]]:
    from areal_flow.runtime.ledger import read_ledger

    out: dict[Path, set[str]] = {}
    current: Path | None = None
    for event in read_ledger(run_dir):
        if event["e"] == "start":
            current = Path(event["resumed_from"]) if event["resumed_from"] else None
            if current is not None:
                out.setdefault(current, set())
        elif event["e"] == "issued" and current is not None:
            out[current].add(event["g"])
    return out
