"""Evaluation during training: ``evaluation.every`` adds an evaluator node to the graph.

Rules:
- ``with_evaluator(graph)`` returns the graph with a node of kind ``evaluator`` (named ``eval``,
  or ``evaluator`` when that name is taken) fed by the weight publisher (else by the trainer's
  weights port), its settings those of the end-of-run evaluation (``report.eval_settings``:
  data, temperature, max tokens, engine, prompt format and episodes follow the graph), with
  ``every_problems`` problems and ``every_samples`` samples per point (``every_engine`` picks
  its engine). Why a node and not the generator: see ``areal_flow/nodes/evaluator.py``.
- It is idempotent (a graph that has an evaluator is returned as is), so a run folder's
  ``graph.json`` loads again unchanged; the loader and ``run_graph`` both apply it, so
  ``validate``, ``viz`` and the web view show the node the run starts.
"""

from __future__ import annotations

import dataclasses

from areal_flow.roles import PublisherSpec, TrainerSpec
from areal_flow.spec import Graph

KIND = "evaluator"


def with_evaluator(graph: Graph) -> Graph:
    """``graph`` with its evaluator node when ``evaluation.every`` is set (see module rules)."""
    from areal_flow.loader import validate_data
    from areal_flow.report import eval_settings

    spec = graph.evaluation
    if spec is None or spec.every is None or any(n.kind == KIND for n in graph.nodes):
        return graph
    settings = eval_settings(graph)
    if settings is None:
        return graph  # no trainer: nothing changes during the run
    publisher = next((n for n in graph.nodes if isinstance(n, PublisherSpec)), None)
    trainer = next(n for n in graph.nodes if isinstance(n, TrainerSpec))
    feed = publisher.name if publisher is not None else f"{trainer.name}.weights"
    names = {n.name for n in graph.nodes}
    name = "eval" if "eval" not in names else "evaluator"
    samples = spec.every_samples
    node = {
        "kind": KIND,
        "name": name,
        "model": settings.model,
        "every": spec.every,
        "data": settings.data,
        "problems": spec.every_problems,
        "samples": samples,
        "k": min(spec.k, samples),
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "engine": spec.every_engine or settings.engine,
        "format": settings.prompt_format,
        "episode": dataclasses.asdict(settings.episode),
    }
    data = graph.model_dump(mode="json")
    data["nodes"].append(node)
    data["edges"].append(f"{feed} -> {name}")
    return validate_data(data, "evaluation.every")
