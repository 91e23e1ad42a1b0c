"""The Ray launcher's placement rules, without Ray: bundles, cluster checks, ports, rewiring."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from areal_flow.graph import GraphInvalid, build
from areal_flow.runtime import run_graph
from areal_flow.runtime.plan import make_plan
from areal_flow.runtime.ray_placement import (
    GIB,
    LIGHT_MEMORY_BYTES,
    bundle,
    cluster_problems,
    rank_bundles,
    replica_bundles,
    reserve_ports,
    rewire,
)
from areal_flow.spec import Graph, Resources
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig

ROOT = Path(__file__).resolve().parents[2]
NODE = {"CPU": 4.0, "GPU": 1.0, "memory": 16.0 * GIB}


def graph(
    fn: Resources, replicas: int = 2, strategy: str = "PACK", sink: Resources | None = None
) -> Graph:
    return Graph(
        name="g",
        launcher="ray",
        nodes=[
            ListSourceConfig(name="src"),
            FunctionConfig(name="fn", fn="m:f", replicas=replicas, resources=fn),
            CollectSinkConfig(name="sink", resources=sink or Resources(cpus=0)),
        ],
        edges=["src -> fn", "fn -> sink"],
        ray={"strategy": strategy},
    )


def test_bundles_follow_resources_and_light_replicas_reserve_only_memory() -> None:
    assert bundle(Resources(cpus=2, gpus=1, memory=3)) == {
        "CPU": 2.0,
        "GPU": 1.0,
        "memory": 3 * GIB,
    }
    assert bundle(Resources(cpus=0.5)) == {"CPU": 0.5}
    assert bundle(Resources(cpus=0)) == {"memory": LIGHT_MEMORY_BYTES}
    g = graph(Resources(cpus=1), replicas=2)
    assert [(n, r) for n, r, _ in replica_bundles(g)] == [
        ("src", 0),
        ("fn", 0),
        ("fn", 1),
        ("sink", 0),
    ]


def test_a_graph_that_fits_has_no_problems() -> None:
    assert cluster_problems(graph(Resources(cpus=2, gpus=0)), [NODE]) == []
    assert cluster_problems(graph(Resources(cpus=3), strategy="SPREAD"), [NODE, NODE]) == []


def test_a_replica_larger_than_every_node_is_named_with_its_resource() -> None:
    problems = cluster_problems(graph(Resources(cpus=8, gpus=2)), [NODE, NODE])
    assert [p.where for p in problems] == ["nodes.fn.resources.cpus", "nodes.fn.resources.gpus"]
    assert "asks for 8 CPU(s) per replica but the largest Ray node has 4" in problems[0].message
    assert "asks for 2 GPU(s) per replica but the largest Ray node has 1" in problems[1].message


def test_totals_beyond_the_cluster_name_every_node_that_asks() -> None:
    g = graph(Resources(cpus=3, memory=4), sink=Resources(cpus=1))
    problems = cluster_problems(g, [NODE])
    assert [p.where for p in problems] == ["resources"]
    assert "7 CPU(s) in all (fn=6, sink=1) but the Ray cluster has 4" in problems[0].message
    memory = cluster_problems(graph(Resources(cpus=0, memory=10)), [NODE])
    assert "GiB of memory in all (src=0.25, fn=20, sink=0.25)" in memory[0].message


def test_strict_strategies_are_checked() -> None:
    packed = cluster_problems(graph(Resources(cpus=3), strategy="STRICT_PACK"), [NODE, NODE])
    assert [p.where for p in packed] == ["ray.strategy"]
    assert "STRICT_PACK" in packed[0].message and "6 CPU(s) in all" in packed[0].message
    spread = cluster_problems(graph(Resources(cpus=1), strategy="STRICT_SPREAD"), [NODE, NODE])
    assert [p.where for p in spread] == ["ray.strategy"]
    assert "each of the 4 replicas on its own Ray node but the cluster has 2" in spread[0].message


def test_reserved_ports_are_distinct_free_and_in_range() -> None:
    ports = reserve_ports("127.0.0.1", 5, 40000, 40999, exclude=[40000])
    assert len(set(ports)) == 5 and all(40001 <= p <= 40999 for p in ports)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=r"only 0 of the 1 ports .* widen the range"):
            reserve_ports("127.0.0.1", 1, port, port)


def test_a_trainer_of_ranks_gets_a_bundle_per_rank_each_with_its_share() -> None:
    from areal_flow.loader import load_graph

    sets = ["ranks=2", "resources.cpus=4", "resources.gpus=2", "resources.memory=8"]
    g = load_graph(ROOT / "graphs" / "math_rl.py", [f"nodes.trainer.{s}" for s in sets])
    share = {"CPU": 2.0, "GPU": 1.0, "memory": 4 * GIB}
    assert dict(((n, r), b) for n, r, b in replica_bundles(g))[("trainer", 0)] == share
    assert rank_bundles(g) == [("trainer", 0, 1, share)]  # after the replicas' bundles
    assert rank_bundles(graph(Resources(cpus=1))) == []
    one_gpu = cluster_problems(g, [{"CPU": 8.0, "GPU": 1.0, "memory": 64 * GIB}])
    assert [p.where for p in one_gpu] == ["resources"]
    assert "2 GPU(s) in all (trainer=2)" in one_gpu[0].message
    no_gpu = cluster_problems(g, [{"CPU": 8.0, "GPU": 0.0, "memory": 64 * GIB}])
    assert no_gpu[0].where == "nodes.trainer.resources.gpus"
    assert "asks for 1 GPU(s) per rank but the largest Ray node has 0" in no_gpu[0].message


def test_rewire_moves_every_address_consistently(tmp_path: Path) -> None:
    g = graph(Resources(cpus=1))
    plan = make_plan(g, build(g), tmp_path, "tcp://127.0.0.1:1")
    inputs = {
        r.key: [f"tcp://10.0.0.{i}:{20000 + j}" for j in range(len(r.inputs))]
        for i, r in enumerate(plan.replicas)
    }
    gpus = {r.key: [i] for i, r in enumerate(plan.replicas)}
    moved = rewire(plan, inputs, "tcp://10.0.0.9:20999", gpus)
    assert moved.control == "tcp://10.0.0.9:20999"
    fn0, fn1, sink = moved.replica("fn", 0), moved.replica("fn", 1), moved.replica("sink", 0)
    assert fn0.inputs[0].addresses == ["tcp://10.0.0.1:20000"]
    assert moved.replica("src", 0).outputs[0].addresses == [
        "tcp://10.0.0.1:20000",
        "tcp://10.0.0.2:20000",
    ]
    assert fn0.outputs[0].addresses == fn1.outputs[0].addresses == sink.inputs[0].addresses
    assert all(r.cpus == [] for r in moved.replicas), "Ray owns the cores: no pinning"
    assert fn1.gpus == [2]


def test_launcher_ray_without_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(GraphInvalid, match=r"launcher: 'ray' needs the ray package: pip install"):
        run_graph(graph(Resources(cpus=0)), tmp_path, launcher="ray")
