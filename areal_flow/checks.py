"""Cross-node rules of a graph: the roles of the RL loop, sampling settings, local paths.

Rules (each broken rule is a ``Problem`` naming the field path and the fix):
- At most one trainer per graph: a trainer gates the graph (staleness, ledger) and ends the run.
- Every source whose data reaches the trainer emits ``prompt`` records: the staleness gate
  admits prompt groups, and a source it cannot see would silently run ungated.
- The generators feeding a trainer sample at one temperature, and the trainer computes its
  log-probs at that temperature: its ``temperature`` is null (taken from them,
  ``trainer_temperature``) or equal. ``top_p`` < 1 or ``top_k`` > 0 are refused in a graph with a
  trainer: the behaviour log-probs would then come from a truncated distribution that the
  trainer's log-probs do not match (its importance weights would be wrong at zero staleness).
- Generators and their trainer start from the same model (one tokenizer, one policy).
- Fields typed ``ModelRef``/``DatasetRef``/``CheckpointRef`` (``areal_flow.spec.LocalPath``) name
  files that must exist on this machine — checked unless the graph runs on Ray, whose nodes
  may see other file systems. Relative paths are relative to the working directory, as the
  workers see them. ``FunctionRef`` fields must resolve to a function (importing its module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import networkx as nx

from areal_flow.roles import GeneratorSpec, SourceSpec, TrainerSpec
from areal_flow.spec import Graph, Importable, LocalPath, NodeSpec, Spec

DEFAULT_TEMPERATURE = 1.0


def role_problems(graph: Graph, data_edges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(where, message) for each broken cross-node rule."""
    trainers = [n for n in graph.nodes if isinstance(n, TrainerSpec)]
    if len(trainers) > 1:
        names = ", ".join(t.name for t in trainers)
        return [("nodes", f"a graph has at most one trainer; found {len(trainers)} ({names})")]
    if not trainers:
        return []
    trainer = trainers[0]
    feeding = _upstream(graph, data_edges, trainer.name)
    problems = _source_problems(graph, feeding, trainer)
    generators = [n for n in feeding if isinstance(n, GeneratorSpec)]
    problems += _sampling_problems(generators, trainer)
    return problems


def trainer_temperature(graph: Graph | None, trainer: TrainerSpec) -> float:
    """The temperature the trainer computes log-probs at: its own if set (validation made it
    agree), else that of the generators feeding it, else 1."""
    if trainer.temperature is not None:
        return trainer.temperature
    if graph is None:
        return DEFAULT_TEMPERATURE
    edges = [(e.split("src")[0], e.split("dst")[0]) for e in graph.edges]
    nodes = _upstream(graph, edges, trainer.name)
    temps = [n.sampling.temperature for n in nodes if isinstance(n, GeneratorSpec)]
    return temps[0] if temps else DEFAULT_TEMPERATURE


def path_problems(graph: Graph) -> list[tuple[str, str]]:
    """(where, message) for each ``LocalPath`` field naming something that does not exist."""
    if graph.launcher == "ray":
        return []
    problems = []
    for node in graph.nodes:
        problems += _spec_paths(node, f"nodes.{node.name}")
    if graph.evaluation is not None:
        problems += _spec_paths(graph.evaluation, "evaluation")
    return problems


def function_refs(graph: Graph) -> list[str]:
    """Every ``FunctionRef`` value of the graph's nodes (the functions its workers load)."""
    refs: list[str] = []
    todo: list[Spec] = list(graph.nodes)
    while todo:
        spec = todo.pop()
        for name, info in type(spec).model_fields.items():
            value = getattr(spec, name)
            if isinstance(value, Spec):
                todo.append(value)
            elif value is not None and any(
                isinstance(m, Importable)
                for m in [*info.metadata, *_nested_metadata(info.annotation)]
            ):
                refs.append(str(value))
    return refs


def _upstream(graph: Graph, edges: list[tuple[str, str]], name: str) -> list[NodeSpec]:
    """Nodes whose data reaches ``name`` (weight edges excluded by the caller or harmless:
    weights flow from the trainer, so they never make a node upstream of it)."""
    data = nx.DiGraph(edges)
    data.add_nodes_from(n.name for n in graph.nodes)
    ancestors = nx.ancestors(data, name)
    return [n for n in graph.nodes if n.name in ancestors]


def _source_problems(
    graph: Graph, feeding: list[NodeSpec], trainer: TrainerSpec
) -> list[tuple[str, str]]:
    problems = []
    for node in feeding:
        is_source = isinstance(node, SourceSpec) or not type(node).inputs
        if is_source and not any(p.record == "prompt" for p in type(node).outputs.values()):
            problems.append(
                (
                    f"nodes.{node.name}",
                    f"source {node.name!r} feeds the trainer {trainer.name!r} but emits no "
                    "'prompt' records, so the staleness gate could not admit its groups; emit "
                    "prompt records (a port with record='prompt', a SourceSpec subclass)",
                )
            )
    return problems


def _sampling_problems(
    generators: list[GeneratorSpec], trainer: TrainerSpec
) -> list[tuple[str, str]]:
    problems = []
    for gen in generators:
        where = f"nodes.{gen.name}.sampling"
        if gen.sampling.top_p < 1:
            problems.append((f"{where}.top_p", _truncated("top_p", gen.sampling.top_p, "1")))
        if gen.sampling.top_k > 0:
            problems.append((f"{where}.top_k", _truncated("top_k", gen.sampling.top_k, "0")))
        if gen.model != trainer.model:
            problems.append(
                (
                    f"nodes.{trainer.name}.model",
                    f"the trainer starts from {trainer.model!r} but generator {gen.name!r} "
                    f"samples from {gen.model!r}; give both the same model",
                )
            )
    temps = {gen.sampling.temperature for gen in generators}
    if len(temps) > 1:
        listing = ", ".join(f"{g.name}={g.sampling.temperature:g}" for g in generators)
        problems.append(
            (
                "nodes",
                f"the generators feeding trainer {trainer.name!r} sample at different "
                f"temperatures ({listing}); the trainer's log-probs need one: make them equal",
            )
        )
    elif temps and trainer.temperature is not None and trainer.temperature not in temps:
        gen = generators[0]
        problems.append(
            (
                f"nodes.{trainer.name}.temperature",
                f"trainer temperature {trainer.temperature:g} differs from "
                f"nodes.{gen.name}.sampling.temperature {gen.sampling.temperature:g}: the "
                "behaviour log-probs would not match the trainer's; remove the trainer's "
                "temperature (it follows the generator) or make them equal",
            )
        )
    return problems


def _truncated(field: str, value: Any, off: str) -> str:
    return (
        f"{field} = {value} samples from a truncated distribution whose log-probs the trainer "
        f"cannot reproduce (wrong importance weights even at zero staleness); set {field} = "
        f"{off} in a graph with a trainer"
    )


def _spec_paths(spec: Spec, where: str) -> list[tuple[str, str]]:
    problems = []
    for name, info in type(spec).model_fields.items():
        value = getattr(spec, name)
        if isinstance(value, Spec):
            problems += _spec_paths(value, f"{where}.{name}")
            continue
        metadata = [*info.metadata, *_nested_metadata(info.annotation)]
        if value is None:
            continue
        marker = next((m for m in metadata if isinstance(m, LocalPath)), None)
        message = _missing(marker, str(value)) if marker is not None else None
        if any(isinstance(m, Importable) for m in metadata):
            message = _unloadable(str(value))
        if message:
            problems.append((f"{where}.{name}", message))
    return problems


def _unloadable(ref: str) -> str | None:
    """Why the function reference ``ref`` cannot be used; None when it resolves to a callable."""
    from areal_flow.usercode import UserCodeError, resolve

    try:
        obj = resolve(ref)
    except UserCodeError as err:
        return str(err)
    return None if callable(obj) else f"{ref} is a {type(obj).__name__}, not a function"


def _nested_metadata(annotation: Any) -> list[Any]:
    """Metadata of ``Annotated`` types inside a union (``CheckpointRef | None``): Pydantic
    lifts only a top-level ``Annotated`` into the field's metadata."""
    found = []
    for arg in get_args(annotation):
        found += list(getattr(arg, "__metadata__", ())) + _nested_metadata(arg)
    return found


def _missing(marker: LocalPath, value: str) -> str | None:
    """Why ``value`` is not a usable ``marker.what``; None when it is."""
    if value in marker.names or value.split(":", 1)[0] in marker.names:
        return None
    path = Path(value).expanduser()
    builtins = f" or one of {', '.join(map(repr, marker.names))}" if marker.names else ""
    if marker.what == "model":
        if path.is_dir() and (path / "config.json").is_file():
            return None
        if path.is_file() and path.suffix == ".gguf":
            return None
        found = "a folder without config.json" if path.is_dir() else "nothing"
        return (
            f"model {value!r}: found {found} at {path.resolve()}; give a Hugging Face model "
            f"folder (with config.json), a .gguf file{builtins}"
        )
    if path.exists():
        return None
    return (
        f"{marker.what} {value!r} does not exist ({path.resolve()}); give an existing "
        f"path{builtins}"
    )
