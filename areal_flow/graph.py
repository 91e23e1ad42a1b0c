"""From a validated ``Graph`` spec to a checked networkx graph.

Rules:
- ``check`` reports every problem at once; each ``Problem`` names where (node, edge or field)
  and how to fix it. ``build`` raises ``GraphInvalid`` with that list.
- An edge end without a port resolves to the node's only port on that side, else to the one
  port whose record type matches the other end.
- Weight edges (either end a ``weights`` port) are the declared feedback path: they may close a
  loop; any other cycle is an error.
- Placement is checked here for the local launcher; Ray checks its cluster at start.
  Colocated placement (``areal_flow.colocation``) is checked for both: its pair takes every
  core, so their ``cpus`` requests count for nothing here.
- Cross-node rules (roles, sampling, local paths) live in ``areal_flow.checks``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from areal_flow.checks import path_problems, role_problems
from areal_flow.colocation import colocated_nodes, colocation_problems
from areal_flow.schema import schema_difference, schema_for
from areal_flow.spec import Edge, Graph, NodeSpec, Port


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph: where it is and what to do."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class GraphInvalid(ValueError):
    """A graph that cannot run; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class ResolvedEdge:
    """An edge with both ports resolved."""

    index: int
    spec: Edge
    src: str
    src_port: str
    dst: str
    dst_port: str
    record: str
    weights: bool

    @property
    def label(self) -> str:
        return f"{self.src}.{self.src_port} -> {self.dst}.{self.dst_port}"


@dataclass(frozen=True)
class Machine:
    """What the local machine offers to the local launcher."""

    cpus: int
    gpus: int

    @classmethod
    def detect(cls) -> Machine:
        return cls(cpus=len(os.sched_getaffinity(0)), gpus=count_gpus())


def count_gpus() -> int:
    """CUDA GPUs visible to this process, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    proc = Path("/proc/driver/nvidia/gpus")
    return len(list(proc.iterdir())) if proc.is_dir() else 0


def build(graph: Graph, machine: Machine | None = None) -> nx.MultiDiGraph:
    """The checked graph: nodes carry ``spec``; edges carry ``edge`` (a ResolvedEdge)."""
    problems, resolved = _check_structure(graph)
    problems += check_placement(graph, machine or Machine.detect())
    if problems:
        raise GraphInvalid(problems)
    g = nx.MultiDiGraph(name=graph.name)
    for node in graph.nodes:
        g.add_node(node.name, spec=node)
    for edge in resolved:
        g.add_edge(edge.src, edge.dst, key=edge.index, edge=edge)
    return g


def check(graph: Graph, machine: Machine | None = None) -> list[Problem]:
    """Every problem with ``graph``; empty when it can run."""
    problems, _ = _check_structure(graph)
    return problems + check_placement(graph, machine or Machine.detect())


def resolved_edges(g: nx.MultiDiGraph) -> list[ResolvedEdge]:
    """The edges of a built graph, in spec order."""
    return sorted((data["edge"] for *_, data in g.edges(data=True)), key=lambda e: e.index)


def _check_structure(graph: Graph) -> tuple[list[Problem], list[ResolvedEdge]]:
    problems = _duplicate_names(graph)
    nodes = {n.name: n for n in graph.nodes}
    resolved: list[ResolvedEdge] = []
    for index, edge in enumerate(graph.edges):
        edge_problems, result = _resolve_edge(index, edge, nodes)
        problems += edge_problems
        if result is not None:
            resolved.append(result)
    problems += _unconnected_ports(graph, resolved)
    problems += _data_cycles(resolved, [n.name for n in graph.nodes])
    data_edges = [(e.src, e.dst) for e in resolved if not e.weights]
    problems += [Problem(*p) for p in role_problems(graph, data_edges) + path_problems(graph)]
    return problems, resolved


def _duplicate_names(graph: Graph) -> list[Problem]:
    seen: dict[str, int] = {}
    problems = []
    for index, node in enumerate(graph.nodes):
        if node.name in seen:
            problems.append(
                Problem(
                    f"nodes[{index}].name",
                    f"duplicate node name {node.name!r} (also nodes[{seen[node.name]}]); "
                    "give each node a unique name",
                )
            )
        seen.setdefault(node.name, index)
    return problems


def _resolve_edge(
    index: int, edge: Edge, nodes: dict[str, NodeSpec]
) -> tuple[list[Problem], ResolvedEdge | None]:
    where = f"edges[{index}] '{edge}'"
    src_name, src_port = edge.split("src")
    dst_name, dst_port = edge.split("dst")
    problems = [
        Problem(where, _unknown_node(name, nodes))
        for name in dict.fromkeys((src_name, dst_name))
        if name not in nodes
    ]
    if problems:
        return problems, None
    src, dst = nodes[src_name], nodes[dst_name]
    if not src.outputs:
        return [Problem(where, f"node {src_name!r} ({src.kind}) has no output ports")], None
    if not dst.inputs:
        return [Problem(where, f"node {dst_name!r} ({dst.kind}) has no input ports")], None
    other_dst = dst.inputs.get(dst_port) if dst_port else None
    out_port, err_out = _pick_port(src, "output", src.outputs, src_port, other_dst)
    in_port, err_in = _pick_port(
        dst, "input", dst.inputs, dst_port, src.outputs.get(out_port) if out_port else None
    )
    problems = [Problem(where, err) for err in (err_out, err_in) if err]
    if out_port is None or in_port is None:
        return problems, None
    a, b = src.outputs[out_port], dst.inputs[in_port]
    mismatch = _record_mismatch(a, b)
    if mismatch:
        problems.append(Problem(where, mismatch))
    record = a.record if a.record != "any" else b.record
    result = ResolvedEdge(
        index, edge, src_name, out_port, dst_name, in_port, record, a.weights or b.weights
    )
    return problems, result


def _pick_port(
    node: NodeSpec, side: str, ports: dict[str, Port], wanted: str | None, other: Port | None
) -> tuple[str | None, str | None]:
    """(port name, None) or (None, why not)."""
    listing = ", ".join(f"{n} ({p.record})" for n, p in ports.items())
    if wanted is not None:
        if wanted in ports:
            return wanted, None
        close = difflib.get_close_matches(wanted, list(ports), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return None, f"node {node.name!r} has no {side} port {wanted!r}; {hint}{side}s: {listing}"
    if len(ports) == 1:
        return next(iter(ports)), None
    if other is not None:
        matching = [n for n, p in ports.items() if p.record in (other.record, "any")]
        if len(matching) == 1:
            return matching[0], None
    return None, (
        f"node {node.name!r} has several {side} ports ({listing}); name one, "
        f"e.g. '{node.name}.{next(iter(ports))}'"
    )


def _record_mismatch(src: Port, dst: Port) -> str | None:
    if src.record == dst.record or "any" in (src.record, dst.record):
        return None
    a, b = schema_for(src.record), schema_for(dst.record)
    assert a is not None and b is not None
    fields = "; ".join(schema_difference(a, b))
    return (
        f"schema mismatch: producer sends '{src.record}' records, consumer expects "
        f"'{dst.record}' ({fields}); connect ports of the same record type"
    )


def _unknown_node(name: str, nodes: dict[str, NodeSpec]) -> str:
    close = difflib.get_close_matches(name, list(nodes), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown node {name!r}; {hint}nodes: {', '.join(nodes)}"


def _unconnected_ports(graph: Graph, resolved: list[ResolvedEdge]) -> list[Problem]:
    used_in = {(e.dst, e.dst_port) for e in resolved}
    used_out = {(e.src, e.src_port) for e in resolved}
    problems = []
    for node in graph.nodes:
        for side, ports, used in (
            ("input", node.inputs, used_in),
            ("output", node.outputs, used_out),
        ):
            for port_name, port in ports.items():
                if port.required and (node.name, port_name) not in used:
                    arrow = (
                        f"X -> {node.name}.{port_name}"
                        if side == "input"
                        else (f"{node.name}.{port_name} -> X")
                    )
                    problems.append(
                        Problem(
                            f"nodes.{node.name}",
                            f"required {side} port {port_name!r} ({port.record}) is not "
                            f"connected; add an edge '{arrow}'",
                        )
                    )
    return problems


def _data_cycles(resolved: list[ResolvedEdge], order: list[str]) -> list[Problem]:
    data = nx.DiGraph()
    data.add_edges_from((e.src, e.dst) for e in resolved if not e.weights)
    problems = []
    for found in nx.simple_cycles(data):
        # Start the printed loop at the node declared first, so it reads in spec order.
        first = min(range(len(found)), key=lambda i: order.index(found[i]))
        cycle = found[first:] + found[:first]
        path = " -> ".join([*cycle, cycle[0]])
        problems.append(
            Problem(
                "edges",
                f"data cycle {path}; data must flow one way (only weight edges may feed back)",
            )
        )
    return problems


def check_placement(graph: Graph, machine: Machine) -> list[Problem]:
    """Resource requests the local machine cannot meet (under Ray only colocation's rules)."""
    problems = [Problem(*p) for p in colocation_problems(graph)]
    if graph.launcher == "ray":
        return problems
    shared = {n.name for n in colocated_nodes(graph)}  # every core each, whatever they ask
    for node in graph.nodes:
        res = node.resources
        if res.cpus > machine.cpus and node.name not in shared:
            problems.append(
                Problem(
                    f"nodes.{node.name}.resources.cpus",
                    f"asks for {res.cpus:g} CPUs per replica but this machine has "
                    f"{machine.cpus}; lower it or use launcher 'ray'",
                )
            )
        needed = pack_gpus([node])[1]
        if needed > machine.gpus:
            problems.append(
                Problem(
                    f"nodes.{node.name}.resources.gpus",
                    f"asks for {needed} GPU(s) ({node.replicas} replica(s) × "
                    f"{res.gpus:g}) but this machine has {machine.gpus}; lower it or use "
                    "launcher 'ray'",
                )
            )
    total_cpus = sum(n.resources.cpus * n.replicas for n in graph.nodes if n.name not in shared)
    total_gpus = pack_gpus(graph.nodes)[1]
    if total_cpus > machine.cpus and not problems:
        problems.append(_total_problem("cpus", total_cpus, machine.cpus, graph))
    if total_gpus > machine.gpus and not any(p.where.endswith("gpus") for p in problems):
        problems.append(_total_problem("gpus", total_gpus, machine.gpus, graph))
    return problems


def pack_gpus(nodes: list[NodeSpec]) -> tuple[dict[tuple[str, int], list[int]], int]:
    """GPU indices (0, 1, … of the GPUs this machine shows) per replica, and how many GPUs that
    takes. In node order, a replica asking for whole GPUs gets the next ones of its own; one
    asking for a share (0 < gpus < 1) goes to the first shared GPU with room left, else opens
    the next GPU for sharing."""
    assigned: dict[tuple[str, int], list[int]] = {}
    used: list[float] = []  # per GPU: 1.0 when whole, else the sum of the shares placed on it
    for node in nodes:
        want = node.resources.gpus
        for r in range(node.replicas):
            if want >= 1:
                first = len(used)
                used.extend([1.0] * int(want))
                assigned[(node.name, r)] = list(range(first, len(used)))
            elif want > 0:
                room = [i for i, u in enumerate(used) if u < 1.0 and u + want <= 1.0 + 1e-9]
                index = room[0] if room else len(used)
                if not room:
                    used.append(0.0)
                used[index] += want
                assigned[(node.name, r)] = [index]
    return assigned, len(used)


def _total_problem(resource: str, total: float, have: int, graph: Graph) -> Problem:
    users = ", ".join(
        f"{n.name}={getattr(n.resources, resource) * n.replicas:g}"
        for n in graph.nodes
        if getattr(n.resources, resource)
    )
    return Problem(
        "resources",
        f"the graph asks for {total:g} {resource.upper()} in all ({users}) but this machine has "
        f"{have}; lower some nodes' resources.{resource} (fractions share cores) or use launcher "
        "'ray'",
    )
