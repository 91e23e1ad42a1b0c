"""kill -9 of each stateless node kind of the math graph mid-run: restarted, the run completes,
and the ledger proves every prompt of the epoch trained exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from areal_flow.runtime import Driver
from areal_flow.spec import Graph
from tests.faults.harness import (
    WatchedRun,
    assert_epoch_trained_exactly_once,
    ledger_events,
    math_graph,
    session_members,
)

pytestmark = pytest.mark.slow

PROMPTS = 64  # 16 steps of 4 groups: room for four crashes and their restarts under CI load


def test_generator_verifier_filter_and_publisher_restart_and_lose_nothing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    graph = math_graph(tiny_model_dir, PROMPTS)
    assert [graph.node(n).stateless for n in ("gen", "reward", "filter", "publisher")] == [True] * 4
    with WatchedRun(graph, tmp_path) as run:
        check_restarts(run, tmp_path, graph)


def check_restarts(run: WatchedRun, tmp_path: Path, graph: Graph) -> None:
    """Kill each stateless kind in turn, each once the previous one is back at work."""
    # The generator dies holding prompt groups mid-generation, after a first policy update.
    run.wait(
        "a trained step and prompt groups at the generator",
        lambda d: d.version >= 1 and run.running("gen") and holds_groups(d, "gen/0"),
    )
    killed = [run.kill("gen")]
    seen = run.replica("reward").metrics.get("batches_in", 0)
    run.wait(
        "the restarted generator, on the newest weights, feeding the verifier",
        lambda d: (
            run.replica("gen").restarts == 1
            and run.running("gen")
            and run.replica("gen").metrics.get("policy_version", 0) >= 1
            and run.replica("reward").metrics.get("batches_in", 0) >= seen + 2
        ),
    )
    killed.append(run.kill("reward"))
    seen = run.replica("filter").metrics.get("batches_in", 0)
    run.wait(
        "the restarted verifier feeding the filter",
        lambda d: (
            run.replica("reward").restarts == 1
            and run.running("reward")
            and run.replica("filter").metrics.get("batches_in", 0) >= seen + 2
        ),
    )
    killed.append(run.kill("filter"))
    version = run.driver.version if run.driver else 0
    run.wait(
        "the restarted filter and a new policy version",
        lambda d: (
            run.replica("filter").restarts == 1 and run.running("filter") and d.version > version
        ),
    )
    killed.append(run.kill("publisher"))
    result = run.finish()

    assert result.ok, result.failure
    assert result.restarts == {"gen/0": 1, "reward/0": 1, "filter/0": 1, "publisher/0": 1}
    assert result.version == PROMPTS // 4
    lost = {e["g"] for e in ledger_events(tmp_path, "lost")}
    assert lost, "the generator died holding groups: some must have been declared lost"
    again = {e["g"] for e in ledger_events(tmp_path, "reissued")}
    assert lost <= again, f"lost groups never issued again: {sorted(lost - again)}"
    assert result.staleness["running"] == 0, "capacity held by groups that no longer exist"
    assert_epoch_trained_exactly_once(tmp_path, graph)
    # Nothing the killed replicas spawned outlives them (the verifier's worker processes).
    deadline = time.monotonic() + 10
    while session_members(killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_members(killed) == [], "processes of killed replicas are still alive"


def holds_groups(driver: Driver, replica: str) -> bool:
    """The ledger places prompt groups at ``replica`` (taken, or sent and not yet taken on)."""
    assert driver.ledger is not None
    return any(record.at == replica for record in list(driver.ledger.groups.values()))
