"""Where a graph's replicas go on a Ray cluster, and the addresses they bind there.

Rules:
- One placement-group bundle per replica, in plan order, from its ``Resources``: ``CPU``,
  ``GPU`` and ``memory`` (bytes). Ray rejects empty bundles, so a replica asking for nothing
  (a light node: ``cpus: 0``, no GPU, no memory) reserves ``LIGHT_MEMORY_BYTES`` of memory —
  it still takes no CPU, exactly as light replicas share cores under the local launcher.
- A node of several ranks (a data-parallel trainer, ``ranks = N``) gets one bundle per rank,
  each an equal share of its resources (one GPU each when ``gpus = ranks``): the replica's
  bundle is rank 0's, and the bundles of ranks 1..N−1 follow every replica's, in order
  (``rank_bundles``), so ranks may land on other Ray nodes.
- ``cluster_problems`` is checked before the placement group exists: every request the
  cluster can never hold is named with its node and resource (a replica larger than the
  largest Ray node, a total beyond the cluster, a STRICT_* strategy it cannot satisfy).
- Ports come from the configured range; the ports of one host are chosen together, each
  probe socket held until all are picked, so no two sockets of a run share a port.
- Pure: no Ray import. ``rewire`` gives the plan the addresses the actors reported.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

from areal_flow.graph import Problem
from areal_flow.runtime.plan import RunPlan, Wire
from areal_flow.spec import Graph, NodeSpec, Resources

GIB = 1024**3
LIGHT_MEMORY_BYTES = 256 * 1024**2
# Ray resource name -> (Resources field, unit in Ray's terms, how to say it)
RESOURCES = {
    "CPU": ("cpus", 1.0, "CPU(s)"),
    "GPU": ("gpus", 1.0, "GPU(s)"),
    "memory": ("memory", GIB, "GiB of memory"),
}


def bundle(resources: Resources) -> dict[str, float]:
    """The placement-group bundle of one replica."""
    wanted = {
        "CPU": float(resources.cpus),
        "GPU": float(resources.gpus),
        "memory": float(resources.memory or 0) * GIB,
    }
    kept = {name: amount for name, amount in wanted.items() if amount > 0}
    return kept or {"memory": float(LIGHT_MEMORY_BYTES)}


def ranks_of(node: NodeSpec) -> int:
    """How many processes one replica of ``node`` is (a data-parallel trainer's ranks)."""
    return int(getattr(node, "ranks", 1))


def rank_share(resources: Resources, ranks: int) -> Resources:
    """One rank's equal share of a replica's resources."""
    memory = resources.memory / ranks if resources.memory else None
    return Resources(cpus=resources.cpus / ranks, gpus=resources.gpus / ranks, memory=memory)


def replica_bundles(graph: Graph) -> list[tuple[str, int, dict[str, float]]]:
    """(node, replica, bundle) for every replica, in the run plan's order; a replica of
    several ranks: rank 0's bundle."""
    return [
        (node.name, r, bundle(rank_share(node.resources, ranks_of(node))))
        for node in graph.nodes
        for r in range(node.replicas)
    ]


def rank_bundles(graph: Graph) -> list[tuple[str, int, int, dict[str, float]]]:
    """(node, replica, rank, bundle) for ranks 1..N−1 of every replica of several ranks, in
    plan order; these bundles follow the replicas' in the placement group."""
    return [
        (node.name, r, rank, bundle(rank_share(node.resources, ranks_of(node))))
        for node in graph.nodes
        for r in range(node.replicas)
        for rank in range(1, ranks_of(node))
    ]


def cluster_problems(graph: Graph, nodes: list[dict[str, float]]) -> list[Problem]:
    """Requests the Ray cluster (``nodes``: each alive node's total resources) cannot hold."""
    wanted = replica_bundles(graph) + [(n, r, b) for n, r, _, b in rank_bundles(graph)]
    problems: list[Problem] = []
    unit_of = {n.name: "per rank" if ranks_of(n) > 1 else "per replica" for n in graph.nodes}
    for resource, (field, unit, label) in RESOURCES.items():
        largest = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        total = sum(n.get(resource, 0.0) for n in nodes)
        each = {name: b.get(resource, 0.0) for name, _, b in wanted}  # per replica, by node
        summed: dict[str, float] = {}
        for name, _, b in wanted:
            summed[name] = summed.get(name, 0.0) + b.get(resource, 0.0)
        need = sum(summed.values())
        users = ", ".join(f"{name}={v / unit:g}" for name, v in summed.items() if v)
        too_big = [
            Problem(
                f"nodes.{name}.resources.{field}",
                f"asks for {amount / unit:g} {label} {unit_of[name]} but the largest Ray node has "
                f"{largest / unit:g}; lower it or add a Ray node that large",
            )
            for name, amount in each.items()
            if amount > largest
        ]
        problems += too_big
        if too_big:
            continue
        if need > total:
            problems.append(
                Problem(
                    "resources",
                    f"the graph asks for {need / unit:g} {label} in all ({users}) but the Ray "
                    f"cluster has {total / unit:g}; lower some nodes' resources.{field} or "
                    "add Ray nodes",
                )
            )
        elif graph.ray.strategy == "STRICT_PACK" and need > largest:
            problems.append(
                Problem(
                    "ray.strategy",
                    f"STRICT_PACK puts every replica on one Ray node; they ask for "
                    f"{need / unit:g} {label} in all ({users}) but the largest node has "
                    f"{largest / unit:g}; use PACK or lower resources.{field}",
                )
            )
    if graph.ray.strategy == "STRICT_SPREAD" and len(wanted) > len(nodes):
        problems.append(
            Problem(
                "ray.strategy",
                f"STRICT_SPREAD puts each of the {len(wanted)} replicas on its own Ray node but "
                f"the cluster has {len(nodes)}; use SPREAD or add Ray nodes",
            )
        )
    return problems


def reserve_ports(
    host: str, count: int, low: int, high: int, exclude: Iterable[int] = ()
) -> list[int]:
    """``count`` distinct ports in [low, high] that ``host`` could bind a moment ago."""
    span = list(range(low, high + 1))
    start = random.randrange(len(span))  # concurrent runs start their scans apart
    skip = set(exclude)
    held: list[socket.socket] = []
    try:
        for port in span[start:] + span[:start]:
            if len(held) == count:
                break
            if port in skip:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        if len(held) < count:
            raise RuntimeError(
                f"only {len(held)} of the {count} ports needed on {host} are free in "
                f"ray.data_ports [{low}, {high}]; widen the range"
            )
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for sock in held:
            sock.close()


def rewire(
    plan: RunPlan,
    inputs: dict[str, list[str]],
    control: str,
    gpus: dict[str, list[int]],
) -> RunPlan:
    """``plan`` with each replica's input addresses (``inputs[key]``, one per input wire, in
    order) replacing the planned ones everywhere, the driver at ``control``, Ray's GPU ids and
    no core pinning (Ray owns the cores of its nodes)."""
    moved = {
        wire.addresses[0]: new
        for replica in plan.replicas
        for wire, new in zip(replica.inputs, inputs[replica.key], strict=True)
    }

    def wires(group: list[Wire]) -> list[Wire]:
        return [w.model_copy(update={"addresses": [moved[a] for a in w.addresses]}) for w in group]

    replicas = [
        r.model_copy(
            update={
                "cpus": [],
                "gpus": gpus[r.key],
                "inputs": wires(r.inputs),
                "outputs": wires(r.outputs),
            }
        )
        for r in plan.replicas
    ]
    return plan.model_copy(update={"control": control, "replicas": replicas})
