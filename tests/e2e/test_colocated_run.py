"""Colocated synchronous training in a real run: the math graph with ``placement: colocated``
and η = 0 on the tiny model (real worker processes, ZeroMQ, the hf engine, the trainer).

The generator and the trainer are both pinned to every core with thread pools to match, and
they take turns: no prompt group is being generated (between the ledger's 'issued' and
'settled') while the trainer takes an optimizer step, and every trajectory is trained at the
version that generated it (lag 0).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from areal_flow.loader import apply_overrides
from areal_flow.runtime import run_graph
from areal_flow.runtime.launcher import log_path
from areal_flow.runtime.ledger import read_ledger
from areal_flow.runtime.plan import RunPlan
from areal_flow.train.steplog import read_steps
from tests.faults.harness import BATCH_GROUPS, math_graph

pytestmark = pytest.mark.slow

STEPS = 3


def test_colocated_sync_run_takes_turns_on_every_core(tmp_path: Path, tiny_model_dir: Path) -> None:
    graph = apply_overrides(
        math_graph(tiny_model_dir, STEPS * BATCH_GROUPS),
        ["placement=colocated", "staleness.max_lag=0", "staleness.interrupt=false"],
    )
    result = run_graph(graph, tmp_path)
    assert result.ok, result.failure

    steps = read_steps(tmp_path)
    assert [int(s["step"]) for s in steps] == list(range(1, STEPS + 1))
    assert max(s["lag_max"] for s in steps) == 0
    assert result.staleness["lag_max"] == 0

    events = read_ledger(tmp_path)
    issued = {e["g"]: e["t"] for e in events if e["e"] == "issued"}
    settled = {e["g"]: e["t"] for e in events if e["e"] == "settled"}
    assert len(issued) == len(settled) == STEPS * BATCH_GROUPS
    for step in steps:
        start, end = step["time"] - step["step_s"], step["time"]
        generating = [g for g, t in issued.items() if t < end and settled[g] > start]
        assert not generating, f"step {step['step']} overlapped generation of {generating}"

    every = sorted(os.sched_getaffinity(0))
    plan = RunPlan.load(tmp_path / "plan.json")
    assert plan.replica("gen", 0).cpus == plan.replica("trainer", 0).cpus == every
    for node in ("gen", "trainer"):
        log = log_path(tmp_path, node, 0).read_text()
        assert f"cores {every}, {len(every)} threads" in log, log[-2000:]
    assert f"training on {len(every)} thread(s)" in log_path(tmp_path, "trainer", 0).read_text()
