"""GPU placement without a GPU: which device ids each replica is given, and what validation
refuses. (The gpu-marked tests run the same placement on a real device.)"""

from __future__ import annotations

import itertools

import pytest

from areal_flow.graph import Machine, check_placement, pack_gpus
from areal_flow.runtime.plan import assign_gpus
from areal_flow.spec import Graph, Resources
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig


def graph(*gpus: float, replicas: int = 1) -> Graph:
    fns = [
        FunctionConfig(
            name=f"f{i}",
            fn="areal_flow.testing:passthrough",
            replicas=replicas,
            resources=Resources(cpus=0, gpus=g),
        )
        for i, g in enumerate(gpus)
    ]
    names = ["src", *(f.name for f in fns), "sink"]
    return Graph(
        name="gpus",
        nodes=[ListSourceConfig(name="src"), *fns, CollectSinkConfig(name="sink")],
        edges=[f"{a} -> {b}" for a, b in itertools.pairwise(names)],
    )


def test_whole_gpus_are_dedicated_and_shares_pack_onto_one_gpu() -> None:
    assigned, needed = pack_gpus(graph(1, 0.5, 0.5, 0.3).nodes)
    assert assigned == {("f0", 0): [0], ("f1", 0): [1], ("f2", 0): [1], ("f3", 0): [2]}
    assert needed == 3
    assigned, needed = pack_gpus(graph(0.5, 2, replicas=2).nodes)
    assert assigned == {("f0", 0): [0], ("f0", 1): [0], ("f1", 0): [1, 2], ("f1", 1): [3, 4]}
    assert needed == 5


def test_a_generator_and_a_trainer_share_the_only_gpu() -> None:
    one_gpu = Machine(cpus=2, gpus=1)
    assert check_placement(graph(0.5, 0.5), one_gpu) == []
    problems = check_placement(graph(1, 0.5), one_gpu)
    assert [p.where for p in problems] == ["resources"]
    assert "2 GPUS in all" in problems[0].message


def test_ids_follow_the_driver_s_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert assign_gpus(graph(0.5, 0.5, 1)) == {("f0", 0): [2], ("f1", 0): [2], ("f2", 0): [3]}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8d1c")
    with pytest.raises(ValueError, match="by UUID"):
        assign_gpus(graph(1))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert assign_gpus(graph(1, 1)) == {("f0", 0): [0], ("f1", 0): [1]}


def test_more_than_one_gpu_must_be_whole() -> None:
    with pytest.raises(ValueError, match="whole GPUs"):
        Resources(gpus=1.5)
