"""The staleness bound in a real run: K = 2 updates per batch and a filter that drops rows.

Issue 15: with K > 1 the gate admitted K times faster than the trainer consumed, and a filter
that dropped single rows let the lag drift (or, at η = 0, stopped the run). Here the math graph
runs with real processes and the tiny model: responses that hit max_tokens are dropped row by
row (``truncated='drop'``; a stop string ends the others early), two optimizer steps per batch.
Every step's lag must stay within η + K − 1, and within η for each batch's first minibatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.loader import apply_overrides
from areal_flow.runtime import run_graph
from areal_flow.train.steplog import read_steps
from tests.faults.harness import math_graph

pytestmark = pytest.mark.slow

K = 2
STEPS = 12  # 6 batches


@pytest.mark.parametrize("eta", [0, 1])
def test_k_two_and_dropped_rows_keep_the_lag_bound(
    tmp_path: Path, tiny_model_dir: Path, eta: int
) -> None:
    graph = apply_overrides(
        math_graph(tiny_model_dir, 32),
        [
            f"nodes.trainer.algo.updates_per_batch={K}",
            f"nodes.trainer.steps={STEPS}",
            "nodes.trainer.checkpoint_every=100",
            "nodes.filter.truncated=drop",
            "nodes.gen.sampling.max_tokens=4",
            "nodes.gen.sampling.stop=['e']",
            f"staleness.max_lag={eta}",
            "nodes.prompts.epochs=null",
        ],
    )
    result = run_graph(graph, tmp_path)
    assert result.ok, result.failure
    steps = read_steps(tmp_path)
    assert [int(s["step"]) for s in steps] == list(range(1, STEPS + 1))
    assert max(s["lag_max"] for s in steps) <= eta + K - 1
    assert max(s["lag_max"] for s in steps[::K]) <= eta  # each batch's first minibatch
    # Rows really were dropped inside groups that still reached the trainer.
    assert any(s["sequences"] * K < 4 * 4 for s in steps), [s["sequences"] for s in steps]
    filtered = result.metrics["filter/0"]
    assert filtered.get("dropped_truncated", 0) > 0
    assert result.staleness["lag_max"] <= eta + K - 1
