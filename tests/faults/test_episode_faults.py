"""kill -9 of a generator in the middle of multi-turn episodes, then of the trainer and a
resume: no prompt group lost, none trained twice, and the trained rows keep their loss masks."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.loader import load_graph
from areal_flow.train.steplog import read_steps
from tests.faults.harness import (
    ROOT,
    WatchedRun,
    assert_epoch_trained_exactly_once,
    ledger_events,
    math_overrides,
)
from tests.faults.test_restart_stateless import holds_groups
from tests.faults.test_resume import checkpointed

pytestmark = pytest.mark.slow

PROMPTS = 32  # 8 steps of 4 groups
EPISODES = [
    "nodes.gen.episode=tests.faults.fns:two_turns_with_a_pause",
    "nodes.gen.max_turns=2",
]


def test_generator_killed_mid_episode_then_resume_trains_every_group_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    overrides = math_overrides(tiny_model_dir, PROMPTS) + EPISODES
    graph = load_graph(ROOT / "graphs" / "math_rl.py", overrides)

    with WatchedRun(graph, tmp_path) as run:
        run.wait(
            "a trained step and episodes running at the generator",
            lambda d: d.version >= 1 and run.running("gen") and holds_groups(d, "gen/0"),
            timeout=420,  # a loaded machine (CI beside other jobs) starts replicas slowly
        )
        run.kill("gen")
        run.wait(
            "the restarted generator and another checkpoint",
            lambda d: run.replica("gen").restarts == 1 and checkpointed(tmp_path) >= 3,
            timeout=420,
        )
        run.kill("trainer")
        result = run.finish()
    assert result.failure is not None and result.failure.node == "trainer"
    lost = {e["g"] for e in ledger_events(tmp_path, "lost")}
    assert lost, "the generator died holding groups mid-episode: they must be declared lost"

    with WatchedRun(graph, tmp_path, resume=True) as run:
        result = run.finish(timeout=600)
    assert result.ok, result.failure
    assert_epoch_trained_exactly_once(tmp_path, graph)
    again = {e["g"] for e in ledger_events(tmp_path, "reissued")}
    assert lost <= again, f"lost groups never issued again: {sorted(lost - again)}"
    for step in read_steps(tmp_path):
        assert step["episode/turns"] == 2.0
        # 3 or more inserted tokens per trajectory are context, not trained tokens.
        assert step["sampled_len_mean"] <= step["response_len_mean"] - 3
