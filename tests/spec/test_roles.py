"""Roles are types: the runtime finds the RL loop's pieces by their spec classes, never by names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from areal_flow.checks import trainer_temperature
from areal_flow.graph import GraphInvalid, Machine, build, check
from areal_flow.loader import apply_overrides, load_graph
from areal_flow.roles import ROLE_BASES, SourceSpec, TrainerSpec, role_of
from areal_flow.runtime.driver import staleness_gate
from areal_flow.spec import Graph, NodeSpec, Port
from areal_flow.viz import to_dot

ROOT = Path(__file__).resolve().parents[2]
MATH = ROOT / "graphs" / "math_rl.py"
BOX = Machine(cpus=2, gpus=0)


def test_a_role_set_by_hand_is_refused() -> None:
    with pytest.raises(TypeError, match="subclassing its base spec"):

        class Sneaky(NodeSpec):
            role: ClassVar[str] = "trainer"
            kind: Literal["sneaky"] = "sneaky"


def test_the_temperature_follows_the_generator_through_overrides() -> None:
    """The README's own `--set nodes.gen.sampling.temperature=0.5` trained at 1.0 before."""
    graph = apply_overrides(load_graph(MATH), ["nodes.gen.sampling.temperature=0.5"])
    trainer = graph.node("trainer")
    assert isinstance(trainer, TrainerSpec) and trainer.temperature is None
    assert trainer_temperature(graph, trainer) == 0.5
    assert check(graph, BOX) == []


class CustomSourceConfig(SourceSpec):
    """A user's source of prompt groups without a ``group_size`` field."""

    outputs: ClassVar[dict[str, Port]] = {"prompts": Port(record="prompt")}
    kind: Literal["custom_source"] = "custom_source"


class RowSourceConfig(SourceSpec):
    """A source of arbitrary rows: it cannot be gated."""

    outputs: ClassVar[dict[str, Port]] = {"out": Port(record="any")}
    kind: Literal["row_source"] = "row_source"


def _with_source(source: NodeSpec) -> Graph:
    math = load_graph(MATH)
    nodes: list[Any] = [n for n in math.nodes if n.name != "prompts"]
    edges = ["prompts -> gen.prompts", *[str(e) for e in math.edges[1:]]]
    return Graph(name="custom", nodes=[source, *nodes], edges=edges, staleness=math.staleness)


def test_a_custom_prompt_source_without_group_size_is_gated() -> None:
    graph = _with_source(CustomSourceConfig(name="prompts"))
    assert check(graph, BOX) == []
    gate = staleness_gate(graph)
    assert gate is not None and gate.batch_groups == 4 and gate.max_lag == 2


def test_a_source_the_gate_cannot_see_is_rejected() -> None:
    graph = _with_source(RowSourceConfig(name="prompts"))
    problems = [str(p) for p in check(graph, BOX)]
    assert any(
        p.startswith("nodes.prompts") and "emits no 'prompt' records" in p for p in problems
    ), problems


def test_every_role_is_drawn() -> None:
    for role, base in ROLE_BASES.items():
        assert base.role == role
    graph = load_graph(MATH)
    dot = to_dot(build(graph, BOX))
    assert all(
        role_of(n) in ("source", "generator", "reward", "filter", "trainer", "publisher")
        for n in graph.nodes
    )
    assert dot.count("fillcolor") == len(graph.nodes)


def test_validate_names_missing_paths(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "areal_flow.cli",
            "validate",
            str(MATH),
            "--set",
            "nodes.prompts.dataset=nowhere/train.jsonl",
            "--set",
            f"nodes.gen.model={tmp_path / 'no-model'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    assert "nodes.prompts.dataset" in result.stderr and "does not exist" in result.stderr
    assert "nodes.gen.model" in result.stderr


def test_build_refuses_what_check_reports() -> None:
    graph = apply_overrides(load_graph(MATH), ["nodes.trainer.temperature=1.0"])
    with pytest.raises(GraphInvalid, match=r"nodes\.trainer\.temperature"):
        build(graph, BOX)
