"""Colocated placement in the plan: the generator and the trainer both get every core (and the
thread budget that goes with it); what validation refuses, and how it says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from areal_flow.graph import GraphInvalid, Machine, build, check_placement
from areal_flow.loader import load_graph
from areal_flow.runtime.plan import make_plan
from areal_flow.spec import Graph

ROOT = Path(__file__).resolve().parents[2]
COLOCATED = ["placement=colocated", "staleness.max_lag=0", "evaluation=null"]


def math_rl(*overrides: str) -> Graph:
    return load_graph(ROOT / "graphs" / "math_rl.py", list(overrides))


def cores_by_node(graph: Graph, tmp_path: Path) -> dict[str, list[int]]:
    plan = make_plan(graph, build(graph), tmp_path, "tcp://127.0.0.1:1")
    return {r.node: r.cpus for r in plan.replicas}


def test_colocated_generator_and_trainer_each_get_every_core(tmp_path: Path) -> None:
    every = sorted(os.sched_getaffinity(0))
    cores = cores_by_node(math_rl(*COLOCATED), tmp_path)
    assert cores["gen"] == every
    assert cores["trainer"] == every
    # The light nodes stay unpinned: they share the machine as before.
    assert cores["prompts"] == cores["reward"] == cores["filter"] == cores["publisher"] == []


def test_disaggregated_keeps_a_core_each(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores to split")
    cores = cores_by_node(math_rl("staleness.max_lag=0", "evaluation=null"), tmp_path)
    assert len(cores["gen"]) == len(cores["trainer"]) == 1
    assert set(cores["gen"]).isdisjoint(cores["trainer"])


def test_colocated_ignores_the_pair_s_cpu_requests() -> None:
    # Asking for more cores than the machine has is an error only where they would be split.
    machine = Machine(cpus=2, gpus=0)
    big = ["nodes.gen.resources.cpus=2", "nodes.trainer.resources.cpus=2"]
    assert check_placement(math_rl(*COLOCATED, *big), machine) == []
    problems = check_placement(math_rl("staleness.max_lag=0", *big), machine)
    assert [p.where for p in problems] == ["resources"]


@pytest.mark.parametrize(
    ("overrides", "where", "says"),
    [
        (["staleness.max_lag=2"], "staleness.max_lag", "set staleness.max_lag = 0 (got 2)"),
        (["staleness.max_lag=null"], "staleness.max_lag", "(got None)"),
        (["nodes.gen.replicas=2"], "nodes.gen.replicas", "set replicas: 1"),
        (["nodes.trainer.resources.gpus=1"], "nodes.trainer.resources.gpus", "gpus = 0.5 each"),
        (["launcher=ray"], "placement", "needs launcher 'local'"),
    ],
)
def test_colocated_refuses_what_it_cannot_alternate(
    overrides: list[str], where: str, says: str
) -> None:
    graph = math_rl(*COLOCATED, *overrides)
    with pytest.raises(GraphInvalid) as caught:
        build(graph, Machine(cpus=2, gpus=1))
    problems = caught.value.problems
    assert where in [p.where for p in problems], problems
    message = next(p.message for p in problems if p.where == where)
    assert says in message and "placement: disaggregated" in message


def test_colocated_shares_one_gpu_by_fractions() -> None:
    halves = ["nodes.gen.resources.gpus=0.5", "nodes.trainer.resources.gpus=0.5"]
    assert check_placement(math_rl(*COLOCATED, *halves), Machine(cpus=2, gpus=1)) == []
