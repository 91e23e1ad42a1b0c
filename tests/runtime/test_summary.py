"""The run summary counts the final policy's lineage; work a resume redid is reported apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from areal_flow.report import build_summary
from areal_flow.runtime.driver import RunResult
from areal_flow.runtime.tracking import summary_totals
from areal_flow.train.steplog import lineage, read_steps, steps_path


def write_steps(run_dir: Path, steps: list[int], per_step: int = 32) -> None:
    path = steps_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        for step in steps:
            out.write(json.dumps({"step": step, "sequences": per_step, "tokens": 100}) + "\n")


def test_a_resumed_run_counts_its_lineage_and_the_redone_work_apart(tmp_path: Path) -> None:
    """Issue 15: an 8-step run whose trainer was killed after step 5 and resumed from the
    step-4 checkpoint said "optimizer steps 9" and "trajectories trained 288"."""
    write_steps(tmp_path, [1, 2, 3, 4, 5])  # killed after step 5
    write_steps(tmp_path, [5, 6, 7, 8])  # resumed from the step-4 checkpoint
    kept, redone = lineage(read_steps(tmp_path))
    assert [int(r["step"]) for r in kept] == list(range(1, 9))
    assert [int(r["step"]) for r in redone] == [5]
    result = RunResult("completed", tmp_path, 10.0, 8, None, {}, {}, {})
    summary = build_summary(result, None)
    assert (summary.steps, summary.trajectories) == (8, 256)
    assert (summary.redone_steps, summary.redone_trajectories) == (1, 32)
    saved = json.loads(summary.save(tmp_path).read_text())
    assert summary_totals(saved) == {
        "summary/steps": 8.0,
        "summary/trajectories": 256.0,
        "summary/redone_steps": 1.0,
        "summary/redone_trajectories": 32.0,
    }


def test_two_resumes_from_older_checkpoints_supersede_everything_after_them() -> None:
    records = [{"step": s} for s in (1, 2, 3, 4, 3, 4, 5, 2, 3, 4, 5, 6)]
    kept, redone = lineage(records)
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5, 6]
    assert sorted(r["step"] for r in redone) == [2, 3, 3, 4, 4, 5]


def test_the_summary_reports_every_reward_metric_by_name(tmp_path: Path) -> None:
    path = steps_path(tmp_path)
    path.parent.mkdir(parents=True)
    with path.open("w") as out:
        for step in range(1, 8):
            record = {"step": step, "sequences": 4, "reward_mean": step / 10,
                      "reward/brevity": 0.1, "reward/correct": step / 7}  # fmt: skip
            out.write(json.dumps(record) + "\n")
    summary = build_summary(RunResult("completed", tmp_path, 1.0, 7, None, {}, {}, {}), None)
    assert summary.training["reward/brevity"] == pytest.approx(0.1)
    assert summary.training["reward/correct"] == pytest.approx(sum(range(3, 8)) / 7 / 5)
    assert summary.training["reward_mean"] == pytest.approx(0.5)


def test_the_summary_times_start_up_to_the_first_optimizer_step(tmp_path: Path) -> None:
    """Start-up is counted from the command's start; a resumed run's earlier records (before
    this driver started) are not its first step."""
    path = steps_path(tmp_path)
    path.parent.mkdir(parents=True)
    with path.open("w") as out:
        for step, at in ((1, 500.0), (2, 520.0), (2, 1075.0), (3, 1090.0)):  # resumed at 1000
            out.write(json.dumps({"step": step, "time": at, "sequences": 4}) + "\n")
    result = RunResult(
        "completed", tmp_path, 100.0, 3, None, {}, {}, {},
        started_at=1000.0,
        setup_s={"gen/0": 40.0, "trainer/0": 20.0, "gen/1": 45.0},
        all_ready_s=46.0,
    )  # fmt: skip
    summary = build_summary(result, None, launched_at=998.0)
    assert summary.startup_s == {
        "command → driver": 2.0,
        "setup/gen": 45.0,
        "setup/trainer": 20.0,
        "all nodes ready": 48.0,
        "first optimizer step": 77.0,
    }
    saved = json.loads(summary.save(tmp_path).read_text())
    assert summary_totals(saved)["summary/first_step_s"] == 77.0
    # Without the command's start, the driver's start is the origin.
    assert build_summary(result, None).startup_s["first optimizer step"] == 75.0


def test_the_summary_adds_replicas_rates_and_what_lending_borrowed(tmp_path: Path) -> None:
    """A generator held back by the staleness gate is slow in wall time but not while it
    generates; the summary reports both, each the sum over the node's replicas, and the time
    the trainer computed on lent cores."""
    path = steps_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"step": i, "borrowed_s": 1.5}) + "\n" for i in (1, 2)))
    metrics = {
        "gen/0": {"gen_tokens_per_s": 100.0, "gen_busy_tokens_per_s": 180.0},
        "gen/1": {"gen_tokens_per_s": 50.0, "gen_busy_tokens_per_s": 90.0},
        "trainer/0": {"tokens_per_s": 7.0, "borrowed_s": 1.5},
    }  # fmt: skip
    result = RunResult("completed", tmp_path, 1.0, 2, None, metrics, {}, {})
    summary = build_summary(result, None)
    assert summary.tokens_per_s == {"gen": 150.0, "gen (while generating)": 270.0}
    assert summary.borrowed_s == {"trainer": 3.0}
