"""A trainer of 2 ranks under the Ray launcher on a local cluster: one placement-group bundle
per rank, rank 1 a Ray actor of its own that trains with rank 0 to the end of the run; kill -9
of rank 1's actor stops the run within seconds, naming the rank with its last log lines."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from areal_flow.loader import apply_overrides
from areal_flow.runtime.ray_launcher import NAMESPACE
from areal_flow.train.steplog import read_steps
from tests.faults.harness import WatchedRun, alive, math_graph

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install -e '.[ray]' (scripts/setup.sh dev does)"
)

pytestmark = pytest.mark.slow

RANKS = ["nodes.trainer.ranks=2", "nodes.trainer.rank_timeout_s=60"]


def rank_actor(run_dir: Path, rank: int) -> Any:
    """Rank ``rank``'s actor, once rank 0 started it."""
    try:
        return ray.get_actor(f"{run_dir.name}:trainer/0:rank{rank}", namespace=NAMESPACE)
    except ValueError:
        return None


def run_placement_group(run_dir: Path) -> dict[str, Any]:
    (table,) = [
        t
        for t in ray.util.placement_group_table().values()
        if t["name"] == f"areal-flow:{run_dir.name}" and t["state"] == "CREATED"
    ]
    return table


def rank_ready(run_dir: Path, rank: int) -> bool:
    log = run_dir / "logs" / f"trainer.rank{rank}.log"
    return log.exists() and f"rank {rank} of 2 ready" in log.read_text()


def test_two_ranks_get_a_bundle_each_and_train_to_the_end(
    ray_cluster: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    graph = apply_overrides(math_graph(tiny_model_dir, 8), RANKS)
    with WatchedRun(graph, tmp_path, launcher="ray") as run:
        run.wait("rank 1's actor", lambda d: rank_actor(tmp_path, 1) is not None, timeout=300)
        table = run_placement_group(tmp_path)
        place = ray.get(rank_actor(tmp_path, 1).where.remote(), timeout=60)
        result = run.finish(timeout=600)
    replicas = sum(node.replicas for node in graph.nodes)
    bundles = table["bundles"]
    assert len(bundles) == replicas + 1, bundles  # the trainer's replica is rank 0's bundle
    trainer = [n.name for n in graph.nodes].index("trainer")
    assert bundles[trainer] == bundles[replicas] == {"CPU": 0.5}  # resources.cpus = 1, halved
    assert place["pid"] != os.getpid()
    assert result.ok, result.failure
    steps = read_steps(tmp_path)
    assert [int(s["step"]) for s in steps] == [1, 2]
    assert all(s["sequences"] == 16 for s in steps)
    assert rank_ready(tmp_path, 1)
    assert (tmp_path / "checkpoints" / "step_2" / "optim").is_dir()
    assert rank_actor(tmp_path, 1) is None, "the rank's actor ended with the trainer"


def test_killed_rank_actor_stops_the_run_naming_the_rank(
    ray_cluster: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    graph = apply_overrides(math_graph(tiny_model_dir, 16), RANKS)
    with WatchedRun(graph, tmp_path, launcher="ray") as run:
        run.wait(
            "both ranks training",
            lambda d: rank_ready(tmp_path, 1) and run.running("trainer"),
            timeout=300,
        )
        actor = rank_actor(tmp_path, 1)
        pid = ray.get(actor.where.remote(), timeout=60)["pid"]
        os.kill(pid, signal.SIGKILL)  # the actor's process: its rank goes with it
        killed = time.monotonic()
        print(f"killed rank 1's actor (pid {pid}) at {time.strftime('%H:%M:%S')}")
        result = run.finish(timeout=240)
        stopped_s = time.monotonic() - killed
        noticed_s = result.failure.noticed_at - killed if result.failure else float("nan")
        print(f"rank 1's actor killed: the driver knew {noticed_s:.1f} s later, the run ended")
        print(f"{stopped_s:.1f} s later (every other actor stopped)")  # shown with -s
    assert result.status == "failed" and result.failure is not None
    assert result.failure.node == "trainer"
    reason = result.failure.reason
    name = f"{tmp_path.name}:trainer/0:rank1"
    assert f"rank 1 (Ray actor {name}) died: killed by SIGKILL" in reason, reason
    assert "Last lines of" in reason and "rank 1 of 2 ready" in reason, reason
    assert f"the Ray actor of {name} died" in reason, reason
    # As for local ranks (tests/faults/test_trainer_ranks.py): the whole run, every actor of it
    # stopped, within 30 s on a loaded 2-core machine (rank 0 names the dead rank within ~1 s;
    # the driver sees the trainer fail when its process has torn down).
    assert stopped_s < 30, f"the run took {stopped_s:.1f} s to stop after the rank died"
    assert not alive(pid)
    assert rank_actor(tmp_path, 1) is None
