"""A trainer of 2 ranks (FSDP2 over gloo, real processes) in the shortened math graph: it keeps
the staleness bound; kill -9 of rank 1 stops the whole run within seconds, naming the rank with
its last log lines, leaving no rank behind; ``--resume`` finishes the epoch with every prompt
group trained exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from areal_flow.loader import apply_overrides
from areal_flow.runtime import run_graph
from areal_flow.train.steplog import read_steps
from tests.faults.harness import (
    WatchedRun,
    alive,
    assert_epoch_trained_exactly_once,
    checkpoint_meta,
    math_graph,
)
from tests.faults.test_resume import checkpointed, cli, sets

pytestmark = pytest.mark.slow

RANKS = ["nodes.trainer.ranks=2", "nodes.trainer.rank_timeout_s=60"]


def test_two_ranks_train_math_within_the_staleness_bound(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    graph = apply_overrides(math_graph(tiny_model_dir, 8), RANKS)
    result = run_graph(graph, tmp_path)
    assert result.ok, result.failure
    steps = read_steps(tmp_path)
    assert [int(s["step"]) for s in steps] == [1, 2]
    assert all(s["sequences"] == 16 for s in steps)  # 4 groups of 4, all on the two ranks
    assert max(s["lag_max"] for s in steps) <= 1  # staleness.max_lag = 1
    assert result.staleness["lag_max"] <= 1
    assert "rank 1 of 2 ready" in (tmp_path / "logs" / "trainer.rank1.log").read_text()
    assert (tmp_path / "checkpoints" / "step_2" / "optim").is_dir()
    assert_epoch_trained_exactly_once(tmp_path, graph)


def test_killed_rank_stops_the_run_and_resume_trains_every_group_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    prompts = 16
    graph = apply_overrides(math_graph(tiny_model_dir, prompts), RANKS)
    with WatchedRun(graph, tmp_path) as run:
        # Two ranks on a shared 2-core machine: the first checkpoint can take minutes.
        run.wait("a first checkpoint", lambda d: checkpointed(tmp_path) >= 1, timeout=360)
        trainer = run.replica("trainer")
        assert trainer.pid is not None
        (rank1,) = [
            p
            for p in psutil.Process(trainer.pid).children()
            if "areal_flow.train.rank_main" in p.cmdline()
        ]
        os.kill(rank1.pid, signal.SIGKILL)
        killed = time.monotonic()
        result = run.finish()
        stopped_s = time.monotonic() - killed
        print(f"the run stopped {stopped_s:.1f} s after rank 1 was killed")  # shown with -s
    assert result.status == "failed" and result.failure is not None
    assert result.failure.node == "trainer"
    reason = result.failure.reason
    assert f"rank 1 (pid {rank1.pid}) died: killed by SIGKILL" in reason, reason
    assert "Last lines of" in reason and "rank 1 of 2 ready" in reason, reason
    assert stopped_s < 30, f"the run took {stopped_s:.1f} s to stop after the rank died"
    assert not alive(trainer.pid) and not alive(rank1.pid)

    done = cli("--resume", str(tmp_path), *sets(tiny_model_dir), "--set", RANKS[0])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert checkpoint_meta(tmp_path)["step"] == prompts // 4
    assert_epoch_trained_exactly_once(tmp_path, graph)
