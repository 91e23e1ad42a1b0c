"""Lending placement in a real run: the math graph with ``placement: lending`` on the tiny model
(real worker processes, ZeroMQ, the hf engine, the trainer).

The generator keeps its own core and says when it is idle; the trainer may run on both cores
and, with the tiny model's generator idle most of the time, computes part of its steps on the
borrowed core (``borrowed_s`` > 0 in the step log). Training is otherwise the asynchronous run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from areal_flow.loader import apply_overrides
from areal_flow.runtime import run_graph
from areal_flow.runtime.launcher import log_path
from areal_flow.runtime.plan import RunPlan
from areal_flow.train.steplog import read_steps
from tests.faults.harness import BATCH_GROUPS, math_graph

pytestmark = pytest.mark.slow

STEPS = 3


def test_the_trainer_computes_on_the_idle_generator_s_core(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores to lend one")
    graph = apply_overrides(math_graph(tiny_model_dir, STEPS * BATCH_GROUPS), ["placement=lending"])
    result = run_graph(graph, tmp_path)
    assert result.ok, result.failure

    steps = read_steps(tmp_path)
    assert [int(s["step"]) for s in steps] == list(range(1, STEPS + 1))
    assert all(0 <= s["borrowed_s"] <= s["step_s"] + s["prox_s"] + 1 for s in steps)
    assert sum(s["borrowed_s"] for s in steps) > 0
    # The idle time lent is time the generator did not count as generating.
    gen = result.metrics["gen/0"]
    assert 0 < gen["gen_busy_frac"] < 1
    assert gen["gen_busy_tokens_per_s"] > gen["gen_tokens_per_s"] > 0

    plan = RunPlan.load(tmp_path / "plan.json")
    gen, trainer = plan.replica("gen", 0).cpus, plan.replica("trainer", 0).cpus
    log = log_path(tmp_path, "trainer", 0).read_text()
    assert f"cores {sorted(trainer + gen)}, 1 threads" in log, log[-2000:]
    assert "training on 1 thread(s)" in log
    assert "may borrow the cores of ['gen/0']" in log
    assert (tmp_path / "lending" / "gen-0").read_bytes() == b"0"  # a stopped generator lends none
