"""``evaluation.every`` adds the evaluator node: where it is fed, its settings, idempotence."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.evaluation import with_evaluator
from areal_flow.graph import build, resolved_edges
from areal_flow.loader import GraphInvalid, apply_overrides, load_graph
from areal_flow.runtime.tracking import run_name

ROOT = Path(__file__).resolve().parents[2]


def test_every_adds_an_evaluator_fed_by_the_publisher(tmp_path: Path) -> None:
    graph = load_graph(ROOT / "graphs" / "math_rl.py", ["evaluation.every=5"])
    node = graph.node("eval")
    assert node.kind == "evaluator"
    gen = graph.node("gen")
    assert node.model == "smollm2" and node.every == 5  # type: ignore[attr-defined]
    assert node.engine == gen.engine  # type: ignore[attr-defined]
    assert node.temperature == gen.sampling.temperature  # type: ignore[attr-defined]
    assert node.problems == 32 and node.data == "arithmetic"  # type: ignore[attr-defined]
    edges = [e.label for e in resolved_edges(build(graph))]
    assert edges[-1] == "publisher.weights -> eval.weights"
    # A run folder's graph.json loads again with one evaluator, not two.
    (tmp_path / "graph.json").write_text(graph.model_dump_json())
    again = load_graph(tmp_path / "graph.json", [])
    assert [n.name for n in again.nodes] == [n.name for n in graph.nodes]
    assert with_evaluator(again) is again


def test_every_engine_picks_the_evaluators_engine() -> None:
    overrides = ["evaluation.every=5", "evaluation.every_engine=hf"]
    graph = load_graph(ROOT / "graphs" / "math_rl.py", overrides)
    assert graph.node("gen").engine == "vllm"  # type: ignore[attr-defined]
    assert graph.node("eval").engine == "hf"  # type: ignore[attr-defined]


def test_no_every_no_evaluator() -> None:
    graph = load_graph(ROOT / "graphs" / "math_rl.py", [])
    assert "evaluator" not in {n.kind for n in graph.nodes}
    assert with_evaluator(graph) is graph


def test_a_bad_every_names_the_field() -> None:
    graph = load_graph(ROOT / "graphs" / "math_rl.py", [])
    with pytest.raises(GraphInvalid) as err:
        apply_overrides(graph, ["evaluation.every=0"])
    assert any(p.where.startswith("evaluation.every") for p in err.value.problems)


def test_run_names_from_overrides() -> None:
    overrides = [
        "nodes.trainer.model=/tmp/x/model",
        "nodes.gen.model=/tmp/x/model",
        "staleness.max_lag=0",
        "nodes.trainer.steps=3",
    ]
    assert run_name(overrides, "folder") == "model=model max_lag=0 steps=3"
    assert run_name([], "folder") == "folder"
    long = [f"nodes.n{i}.field_with_a_long_name={i}" for i in range(10)]
    name = run_name(long, "folder")
    assert len(name) <= 80 and name.endswith("=2")  # whole parts only
