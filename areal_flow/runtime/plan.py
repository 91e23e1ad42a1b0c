"""The run plan: who binds where, who connects to whom, which cores each replica gets.

Rules:
- The driver decides every data address before any process starts, so a restarted replica
  binds the same address and its producers reconnect without being told. Planned ports lie
  outside the kernel's ephemeral range, which outgoing connections draw from.
- One receiver per (input edge, consumer replica). Data edges load-balance a producer's batches
  over the consumer replicas; weight edges broadcast every notice to every replica.
- Whole-CPU requests get dedicated cores, assigned in node order; 0 or fractional requests get
  no pinning and share what is left. Colocated placement (``areal_flow.colocation``) pins the
  generator and the trainer to every core, both, and places the other nodes as before.
  Lending placement (``areal_flow.lending``) places as disaggregated and gives each
  generator replica an idle flag and the trainer a loan of each one's cores.
- Set-up apart (``startup_cpus``, local launcher): while the graph starts, the replicas without
  cores of their own, and a lending trainer's borrowed cores, stay off the generators' cores;
  once the driver starts the run, what each replica started meanwhile moves to the cores it
  runs on (``worker.move_threads``).
  ``AREAL_FLOW_SETUP_APART=0`` turns this off (``bench/first_step.py`` compares both).
  Whole-GPU requests get GPUs of their own in node order; fractional ones share a GPU
  (``graph.pack_gpus``); ids follow the driver's visible devices.
- The plan is plain JSON in the run folder (``plan.json``): workers read it, tests inspect it.
- A resumed run's plan also carries each replica's resume state (``resume.py`` fills it).
- User code travels by reference: the graph files run as modules and the ``module:qualname`` of
  every node kind outside the registry; a worker loads them (``load_user_code``) before it
  validates the spec.
- ``curve``: every socket of the run uses CurveZMQ with the run's keys (``run_dir/keys``). The
  driver turns it on when any address leaves loopback (a run spanning hosts) or when
  ``AREAL_FLOW_CURVE=1`` forces it (tests: the whole run encrypted on 127.0.0.1).
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import BaseModel, ConfigDict

from areal_flow.checks import function_refs
from areal_flow.colocation import colocated_nodes
from areal_flow.graph import ResolvedEdge, pack_gpus, resolved_edges
from areal_flow.lending import CoreLoan, plan_loans
from areal_flow.registry import user_kinds
from areal_flow.roles import GeneratorSpec, TrainerSpec
from areal_flow.spec import Graph
from areal_flow.transport.curve import needs_curve
from areal_flow.usercode import graph_modules

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PLANNED_PORTS_FROM = 10000
PORT_TRIES = 100
FORCE_CURVE_ENV = "AREAL_FLOW_CURVE"  # "1": CurveZMQ even when every socket is on loopback


class Wire(BaseModel):
    """One end of an edge as seen by one replica."""

    model_config = ConfigDict(frozen=True)

    edge: int  # index in the graph's edge list
    label: str  # "a.out -> b.in", for errors and metrics
    port: str  # this node's port
    record: str
    capacity: int
    weights: bool
    addresses: list[str]  # inputs: [own bind address]; outputs: consumer replicas' addresses
    producers: int = 0  # inputs: producer replicas feeding this edge (for end-of-stream)


class RankPlacement(BaseModel):
    """Where ranks 1..N−1 of a replica of several ranks start when not as rank 0's children
    (the Ray launcher): Ray actors in the run's placement group, and the rendezvous they meet
    at (rank 0's ``TCPStore``, bound on rank 0's host, its port from ``ray.data_ports``)."""

    model_config = ConfigDict(frozen=True)

    rendezvous_host: str
    rendezvous_port: int
    ray_address: str  # the cluster rank 0 connects to, to start the rank actors
    placement_group: str  # its id (hex)
    bundles: list[int]  # bundle index of rank 1, 2, ...
    bundle: dict[str, float]  # what each rank's bundle holds (Ray's resource names)
    actor_prefix: str  # rank r's actor is named "<actor_prefix>:rank<r>"


class ReplicaPlan(BaseModel):
    """Everything one replica process needs besides the graph spec."""

    model_config = ConfigDict(frozen=True)

    node: str
    replica: int
    replicas: int
    cpus: list[int]  # dedicated cores; [] = share the machine
    gpus: list[int]
    inputs: list[Wire]
    outputs: list[Wire]
    resume_state: dict[str, Any] | None = None  # the node's saved state (a resumed run)
    skip_groups: list[str] = []  # a resumed source: groups already resolved, not to issue again
    ranks: RankPlacement | None = None  # None: ranks 1..N−1 are rank 0's child processes
    idle_flag: str | None = None  # lending placement, a generator: the flag it keeps
    loans: list[CoreLoan] = []  # lending placement, the trainer: cores it may borrow
    startup_cpus: list[int] = []  # cores while the graph sets up; [] = as while it runs

    @property
    def key(self) -> str:
        return f"{self.node}/{self.replica}"


class RunPlan(BaseModel):
    """The whole run: the spec as data, the control address, every replica's wiring."""

    model_config = ConfigDict(frozen=True)

    graph: dict[str, Any]
    run_dir: str
    control: str
    replicas: list[ReplicaPlan]
    resume: bool = False
    curve: bool = False  # CurveZMQ on every socket, keys in run_dir/keys
    graph_modules: dict[str, str] = {}  # graph files run as modules: name → path (usercode)
    user_kinds: dict[str, str] = {}  # node kinds outside the registry: kind → module:qualname

    def load_user_code(self) -> None:
        """Make this process know the run's user node kinds (before validating ``graph``)."""
        from areal_flow.registry import register_kinds
        from areal_flow.usercode import load_graph_modules

        load_graph_modules(self.graph_modules)
        register_kinds(self.user_kinds)

    def addresses(self) -> list[str]:
        """Every address a socket of the run binds or connects to."""
        wires = [w for r in self.replicas for w in (*r.inputs, *r.outputs)]
        return [self.control, *(a for w in wires for a in w.addresses)]

    def wants_curve(self) -> bool:
        """Whether the run must use CurveZMQ: set, forced, or some address off loopback."""
        forced = os.environ.get(FORCE_CURVE_ENV, "") not in ("", "0")
        return self.curve or forced or any(needs_curve(a) for a in self.addresses())

    def replica(self, node: str, index: int) -> ReplicaPlan:
        for plan in self.replicas:
            if plan.node == node and plan.replica == index:
                return plan
        raise KeyError(f"no replica {node}/{index} in the plan")

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> RunPlan:
        return cls.model_validate(json.loads(path.read_text()))


def free_tcp_address(host: str = "127.0.0.1", taken: set[str] | None = None) -> str:
    """An address on ``host`` whose port was free a moment ago, outside the kernel's ephemeral
    range. Ports are planned before the replicas that bind them start, and meanwhile every
    outgoing connection on the machine takes a local port from the ephemeral range — the run's
    own ZeroMQ connections among them, hundreds with many replicas — so a planned port there
    can be taken before its replica binds it (seen with 64 generator replicas). ``taken``: the
    addresses already planned, still unbound, so a bind test cannot tell they are in use."""
    pick = random.SystemRandom()  # not the seeded global generator: runs must not agree
    candidates = _planned_ports()
    taken = taken or set()
    for _ in range(PORT_TRIES):
        port = pick.choice(candidates)
        if f"tcp://{host}:{port}" in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:  # in use
                continue
            return f"tcp://{host}:{port}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))  # a crowded range: any free port, as before
        return f"tcp://{host}:{sock.getsockname()[1]}"


def _planned_ports() -> range:
    """Ports for planned addresses: below the ephemeral range, else above it."""
    try:
        low, high = map(int, EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low - PLANNED_PORTS_FROM >= 1000:
        return range(PLANNED_PORTS_FROM, low)
    return range(high + 1, 65536) if high < 64535 else range(PLANNED_PORTS_FROM, 65536)


def make_plan(
    graph: Graph, g: nx.MultiDiGraph, run_dir: Path, control: str, resume: bool = False
) -> RunPlan:
    """Wire every replica of ``g`` and give it cores and GPUs."""
    edges = resolved_edges(g)
    planned = {control}
    inbound: dict[tuple[int, int], str] = {}
    for edge in edges:
        for r in range(graph.node(edge.dst).replicas):
            inbound[(edge.index, r)] = free_tcp_address(taken=planned)
            planned.add(inbound[(edge.index, r)])
    cores = assign_cores(graph)
    flags, loans = plan_loans(graph, cores, run_dir)
    apart = setup_apart(graph, cores, lending=bool(loans))
    gpus = assign_gpus(graph)
    kinds = user_kinds(graph)
    plans = []
    for node in graph.nodes:
        for r in range(node.replicas):
            ins = [
                _wire(e, e.dst_port, [inbound[(e.index, r)]], graph.node(e.src).replicas)
                for e in edges
                if e.dst == node.name
            ]
            outs = [
                _wire(
                    e,
                    e.src_port,
                    [inbound[(e.index, c)] for c in range(graph.node(e.dst).replicas)],
                    0,
                )
                for e in edges
                if e.src == node.name
            ]
            plans.append(
                ReplicaPlan(
                    node=node.name,
                    replica=r,
                    replicas=node.replicas,
                    cpus=cores.get((node.name, r), []),
                    gpus=gpus.get((node.name, r), []),
                    inputs=ins,
                    outputs=outs,
                    idle_flag=flags.get((node.name, r)),
                    loans=loans if isinstance(node, TrainerSpec) else [],
                    startup_cpus=apart.get((node.name, r), []),
                )
            )
    return RunPlan(
        graph=graph.model_dump(mode="json"),
        run_dir=str(run_dir),
        control=control,
        replicas=plans,
        resume=resume,
        graph_modules=graph_modules([*kinds.values(), *function_refs(graph)]),
        user_kinds=kinds,
    )


def _wire(edge: ResolvedEdge, port: str, addresses: list[str], producers: int) -> Wire:
    return Wire(
        edge=edge.index,
        label=edge.label,
        port=port,
        record=edge.record,
        capacity=edge.spec.capacity,
        weights=edge.weights,
        addresses=addresses,
        producers=producers,
    )


def assign_cores(graph: Graph) -> dict[tuple[str, int], list[int]]:
    """Dedicated cores for replicas asking for whole CPUs (≥ 1), in node order; under
    colocated placement the generator and the trainer each get every core instead."""
    available = sorted(os.sched_getaffinity(0))
    assigned: dict[tuple[str, int], list[int]] = {}
    shared = colocated_nodes(graph)
    for node in shared:
        assigned.update({(node.name, r): available for r in range(node.replicas)})
    cursor = 0
    for node in graph.nodes:
        if node in shared:
            continue
        want = math.floor(node.resources.cpus)
        if want < 1:
            continue
        for r in range(node.replicas):
            if cursor + want > len(available):
                return assigned  # oversubscribed (validation allows it only under ray)
            assigned[(node.name, r)] = available[cursor : cursor + want]
            cursor += want
    return assigned


def setup_apart(
    graph: Graph, cores: dict[tuple[str, int], list[int]], lending: bool
) -> dict[tuple[str, int], list[int]]:
    """Where replicas set up when that differs from where they run: off the generators' cores.

    A generator's start (vLLM imported twice, in its process and in the engine core, then the
    engine's set-up) is the longest set-up of a run, and on a small machine every other process
    importing beside it on its cores delays the first rollout. So, under the local launcher,
    replicas without cores of their own set up on the cores no generator holds, and a lending
    trainer on its own cores (its lenders start busy anyway). None when no generator has cores
    of its own, or they hold every core. The main job, four runs each: the generator set up at
    20.3 s against 22.7 s, medians (``bench/first_step.py``, docs/benchmarks.md)."""
    if graph.launcher != "local" or os.environ.get("AREAL_FLOW_SETUP_APART") == "0":
        return {}
    generator_cores = {
        core
        for node in graph.nodes
        if isinstance(node, GeneratorSpec)
        for r in range(node.replicas)
        for core in cores.get((node.name, r), [])
    }
    others = [c for c in sorted(os.sched_getaffinity(0)) if c not in generator_cores]
    if not generator_cores or not others:
        return {}
    apart: dict[tuple[str, int], list[int]] = {}
    for node in graph.nodes:
        for r in range(node.replicas):
            own = cores.get((node.name, r))
            if not own:
                apart[(node.name, r)] = others
            elif lending and isinstance(node, TrainerSpec):
                apart[(node.name, r)] = own  # its loans come with the start
    return apart


def assign_gpus(graph: Graph) -> dict[tuple[str, int], list[int]]:
    """GPU ids per replica, as ``CUDA_VISIBLE_DEVICES`` of the replica will name them: the
    packing of ``pack_gpus`` mapped onto the devices this process may use (its own
    ``CUDA_VISIBLE_DEVICES`` when set: a driver limited to GPUs 2 and 3 hands out 2 and 3).
    Replicas sharing a GPU (fractional ``gpus``) get the same id."""
    assigned, needed = pack_gpus(graph.nodes)
    if not needed or graph.launcher == "ray":  # Ray hands each actor its own GPU ids
        return assigned
    visible = visible_gpus()
    if visible is None:
        return assigned
    if needed > len(visible):
        raise ValueError(
            f"the graph needs {needed} GPU(s) but CUDA_VISIBLE_DEVICES shows {len(visible)}"
        )
    return {key: [visible[i] for i in ids] for key, ids in assigned.items()}


def visible_gpus() -> list[int] | None:
    """The device ids in this process's ``CUDA_VISIBLE_DEVICES``; None when it is unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    ids = [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]
    if not all(d.isdigit() for d in ids):
        raise ValueError(
            f"CUDA_VISIBLE_DEVICES={value!r} names GPUs by UUID; replicas are given GPUs by "
            "index: list indices (e.g. 0,1) instead"
        )
    return [int(d) for d in ids]
