"""Broken graph specs: each fails validation with a problem naming the field or nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from areal_flow.graph import GraphInvalid, Machine, check
from areal_flow.loader import apply_overrides, validate_data

Data = dict[str, Any]
ONE_CPU_BOX = Machine(cpus=2, gpus=0)


def node(data: Data, name: str) -> Data:
    return next(n for n in data["nodes"] if n["name"] == name)


def on_node(target: str, **changes: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        node(data, target).update(changes)

    return mutate


def edges(*new: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data["edges"] = list(new)

    return mutate


def add_edge(edge: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data["edges"].append(edge)

    return mutate


def drop_node(name: str) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data["nodes"] = [n for n in data["nodes"] if n["name"] != name]

    return mutate


def add_node(**fields: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data["nodes"].append(fields)

    return mutate


def top(**changes: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data.update(changes)

    return mutate


def nested(name: str, field: str, **changes: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        node(data, name)[field].update(changes)

    return mutate


MATH_EDGES = [
    "prompts -> gen",
    "gen -> reward",
    "reward -> filter",
    "filter -> trainer",
    "trainer.weights -> publisher",
    "publisher -> gen.weights",
]

# (case id, mutation, text the problem's location must contain, text its message must contain)
BROKEN: list[tuple[str, Callable[[Data], None], str, str]] = [
    (
        "misspelt node field",
        on_node("gen", tempreature=0.5),
        "nodes.gen.tempreature",
        "unknown field",
    ),
    (
        "misspelt nested field",
        nested("gen", "sampling", temprature=0.5),
        "nodes.gen.sampling.temprature",
        "did you mean 'temperature'",
    ),
    (
        "misspelt top-level field",
        top(stalenes={"max_lag": 1}),
        "stalenes",
        "did you mean 'staleness'",
    ),
    ("unknown kind", on_node("gen", kind="genrator"), "nodes.gen.kind", "did you mean 'generator'"),
    ("missing kind", add_node(name="x"), "nodes.x.kind", "needs a 'kind'"),
    ("missing name", add_node(kind="group_filter"), "nodes.6.name", "missing"),
    ("bad node name", on_node("filter", name="my filter"), "name", "pattern"),
    (
        "duplicate node names",
        on_node("filter", name="reward"),
        "nodes[3].name",
        "duplicate node name 'reward'",
    ),
    (
        "negative temperature",
        nested("gen", "sampling", temperature=-1.0),
        "nodes.gen.sampling.temperature",
        "greater than 0",
    ),
    (
        "top_p above one",
        nested("gen", "sampling", top_p=1.5),
        "nodes.gen.sampling.top_p",
        "less than or equal to 1",
    ),
    (
        "zero replicas",
        on_node("reward", replicas=0),
        "nodes.reward.replicas",
        "greater than or equal to 1",
    ),
    ("unknown engine", on_node("gen", engine="tgi"), "nodes.gen.engine", "'vllm' or 'hf'"),
    (
        "wrong type for group size",
        on_node("prompts", group_size="eight"),
        "nodes.prompts.group_size",
        "valid integer",
    ),
    (
        "negative staleness",
        top(staleness={"max_lag": -2}),
        "staleness.max_lag",
        "greater than or equal to 0",
    ),
    ("unknown launcher", top(launcher="k8s"), "launcher", "'local' or 'ray'"),
    ("no nodes", top(nodes=[]), "nodes", "at least 1"),
    ("edge without arrow", add_edge("gen reward"), "edges.6", "one '->'"),
    (
        "edge bad endpoint",
        add_edge("gen.rollouts.x -> reward"),
        "edges.6.src",
        "'node' or 'node.port'",
    ),
    (
        "dangling edge to unknown node",
        add_edge("gen -> rewrd"),
        "edges[6] 'gen -> rewrd'",
        "did you mean 'reward'",
    ),
    (
        "edge to unknown port",
        edges(*MATH_EDGES[:-1], "publisher -> gen.weight"),
        "edges[5]",
        "did you mean 'weights'",
    ),
    (
        "edge capacity zero",
        add_edge({"src": "gen", "dst": "reward", "capacity": 0}),
        "edges.6.capacity",
        "greater than or equal to 1",
    ),
    (
        "edge from a node without outputs",
        edges(*MATH_EDGES, "gen -> prompts"),
        "edges[6]",
        "no input ports",
    ),
    (
        "required input unconnected",
        edges(*MATH_EDGES[1:]),
        "nodes.gen",
        "required input port 'prompts'",
    ),
    (
        "required output unconnected",
        edges(*MATH_EDGES[:3], *MATH_EDGES[4:]),
        "nodes.filter",
        "required output port 'kept'",
    ),
    (
        "schema mismatch",
        edges(*MATH_EDGES, "prompts -> reward"),
        "edges[6] 'prompts -> reward'",
        "schema mismatch",
    ),
    (
        "schema mismatch names fields",
        edges(*MATH_EDGES, "gen -> trainer"),
        "edges[6]",
        "'reward' only on the consumer side",
    ),
    (
        "feedback edge of the wrong record type",
        edges(*MATH_EDGES, "filter.kept -> reward.rollouts"),
        "edges[6]",
        "schema mismatch",
    ),
    (
        "second generator left unconnected",
        add_node(kind="generator", name="gen2"),
        "nodes.gen2",
        "required input port 'prompts'",
    ),
    (
        "too many GPUs",
        nested("trainer", "resources", gpus=2),
        "nodes.trainer.resources.gpus",
        "this machine has 0",
    ),
    (
        "too many CPUs on one node",
        nested("gen", "resources", cpus=64),
        "nodes.gen.resources.cpus",
        "this machine has 2",
    ),
    (
        "too many CPUs in all",
        on_node("reward", resources={"cpus": 1, "gpus": 0}),
        "resources",
        "3 CPUS in all",
    ),
    ("too many replicas for the cores", on_node("gen", replicas=3), "resources", "CPUS in all"),
    (
        "negative cpus",
        nested("gen", "resources", cpus=-1),
        "nodes.gen.resources.cpus",
        "greater than or equal to 0",
    ),
    (
        "bad algo option",
        nested("trainer", "algo", advantage="ppo"),
        "nodes.trainer.algo.advantage",
        "'grpo'",
    ),
    (
        "iw cap not above one",
        nested("trainer", "algo", iw_cap=0.5),
        "nodes.trainer.algo.iw_cap",
        "greater than 1",
    ),
    ("unknown tracking field", top(tracking={"url": "x"}), "tracking.url", "did you mean 'uri'"),
    ("graph name with spaces", top(name="math rl"), "name", "pattern"),
    # Issue 15: cross-node rules and local paths fail validation, not a worker minutes later.
    (
        "trainer temperature differs from the generator's",
        on_node("trainer", temperature=1.0),
        "nodes.trainer.temperature",
        "differs from nodes.gen.sampling.temperature 0.7",
    ),
    (
        "nucleus sampling in a graph with a trainer",
        nested("gen", "sampling", top_p=0.9),
        "nodes.gen.sampling.top_p",
        "truncated distribution",
    ),
    (
        "top-k in a graph with a trainer",
        nested("gen", "sampling", top_k=50),
        "nodes.gen.sampling.top_k",
        "set top_k = 0",
    ),
    (
        "trainer and generator on different models",
        on_node("trainer", model="/nonexistent/other-model"),
        "nodes.trainer.model",
        "samples from 'smollm2'",
    ),
    (
        "missing dataset file",
        on_node("prompts", dataset="data/no-such-file.jsonl"),
        "nodes.prompts.dataset",
        "does not exist",
    ),
    (
        "missing model folder",
        on_node("gen", model="models/missing"),
        "nodes.gen.model",
        "give a Hugging Face model folder",
    ),
    (
        "missing checkpoint to resume from",
        on_node("trainer", resume_from="runs/gone/checkpoints"),
        "nodes.trainer.resume_from",
        "does not exist",
    ),
    (
        "missing evaluation data file",
        top(evaluation={"data": "heldout/missing.jsonl"}),
        "evaluation.data",
        "does not exist",
    ),
    (
        "more updates per batch than groups",
        nested("trainer", "algo", updates_per_batch=8),
        "nodes.trainer",
        "exceeds batch_groups = 4",
    ),
    (
        "two trainers",
        add_node(kind="trainer", name="trainer2", resources={"cpus": 0}),
        "nodes",
        "at most one trainer",
    ),
]


def problems_of(data: Data) -> list[str]:
    try:
        graph = validate_data(data)
    except GraphInvalid as err:
        return [f"{p.where} | {p.message}" for p in err.problems]
    return [f"{p.where} | {p.message}" for p in check(graph, ONE_CPU_BOX)]


@pytest.mark.parametrize(("case", "mutate", "where", "text"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_spec_is_reported(
    math_data: Data, case: str, mutate: Callable[[Data], None], where: str, text: str
) -> None:
    assert problems_of(math_data) == [], "the unbroken math graph must be valid"
    mutate(math_data)
    problems = problems_of(math_data)
    assert problems, f"{case}: no problem reported"
    assert any(where in p.split(" | ")[0] and text in p for p in problems), problems


def test_data_cycle_is_printed(math_data: Data) -> None:
    math_data["nodes"].append({"kind": "group_filter", "name": "again"})
    math_data["edges"] = [
        *MATH_EDGES[:3],
        "filter -> again",
        "again -> trainer",
        "again.kept -> filter.scored",
        *MATH_EDGES[4:],
    ]
    # 'again' feeds both the trainer and back into the filter: filter -> again -> filter.
    problems = problems_of(math_data)
    assert any("data cycle" in p and "filter -> again -> filter" in p for p in problems), problems


def test_all_problems_reported_at_once(math_data: Data) -> None:
    on_node("gen", tempreature=1)(math_data)
    top(launcher="k8s")(math_data)
    on_node("reward", replicas=0)(math_data)
    assert len(problems_of(math_data)) == 3


def test_weight_loop_is_not_a_cycle(math_data: Data) -> None:
    graph = validate_data(math_data)
    assert check(graph, ONE_CPU_BOX) == []


def test_ray_launcher_skips_local_placement(math_data: Data) -> None:
    nested("trainer", "resources", gpus=4)(math_data)
    top(launcher="ray")(math_data)
    assert check(validate_data(math_data), ONE_CPU_BOX) == []


@pytest.mark.parametrize(
    ("override", "text"),
    [
        ("staleness.max_lag=oops", "valid integer"),
        ("nodes.gne.replicas=2", "did you mean 'gen'"),
        ("nodes.gen.sampling.tempreature=0.3", "did you mean 'temperature'"),
        ("no_equals_sign", "path.to.field=value"),
        ("nodes.gen.kind=nope", "unknown node kind"),
        ("staleness.max_lag.deeper=1", "not a group of fields"),
    ],
)
def test_bad_override(math_data: Data, override: str, text: str) -> None:
    graph = validate_data(math_data)
    with pytest.raises(GraphInvalid) as err:
        apply_overrides(graph, [override])
    assert any(text in str(p) for p in err.value.problems), err.value.problems


def test_overrides_apply_and_revalidate(math_data: Data) -> None:
    graph = validate_data(math_data)
    before = graph.model_dump(mode="json")
    assert before["staleness"]["max_lag"] != 0  # so the override below is a change
    changed = apply_overrides(
        graph,
        [
            "staleness.max_lag=0",
            "nodes.gen.sampling.temperature=0.5",
            "nodes.1.replicas=2",
            "staleness.interrupt=false",
            "nodes.gen.sampling.stop=['\\n\\n']",
        ],
    )
    assert changed.staleness.max_lag == 0 and changed.staleness.interrupt is False
    gen = changed.node("gen")
    assert gen.sampling.temperature == 0.5  # type: ignore[attr-defined]
    assert gen.replicas == 2
    assert graph.model_dump(mode="json") == before, "the original spec is frozen and unchanged"
    assert apply_overrides(graph, ["staleness.max_lag=null"]).staleness.max_lag is None
