"""Lending placement: the trainer also computes on a generator's cores while it is idle.

``placement: lending`` (``Graph.placement``) places every node as ``disaggregated`` does (the
generator and the trainer on cores of their own, training asynchronously) and adds one rule:
while a generator replica has no episode running and no weights loading, the trainer adds that
replica's cores to its thread pool. Under the staleness gate a generator that outpaces the
trainer spends much of each step idle (η versions ahead, nothing admitted), and on CPU the
trainer is the slow side; lending gives it the idle core instead of leaving it unused (the
main job with its bf16 generator: 39 s of the trainer's 250 s on the borrowed core,
docs/benchmarks.md). ``bench/async_vs_sync.py`` measures it against disaggregated async and
colocated sync.

Rules:
- Signal: each lending generator replica keeps one byte in ``run_dir/lending/<node>-<replica>``,
  b"1" idle, b"0" busy, written only when it changes. A replica starts busy (its engine loads)
  and turns idle once set up, so a restarted generator is not lent while it starts.
- The trainer's process may run on its own cores and every lender's (its affinity); its
  thread count is its own cores plus the idle lenders' cores. It is set on the compute thread
  before each layer of the model's layer stack runs forward and backward — torch's OpenMP
  thread count belongs to the calling thread, and a hook per layer returns a generator's core
  within one layer (tens of milliseconds) once the generator turns busy.
- Between steps the trainer holds only its own threads; ``borrowed_s`` in each step's metrics
  is the time that step computed on borrowed cores.
- Lends where it can: launcher 'local' (the flag is a file on this machine); one trainer,
  ranks = 1, on CPU (resources.gpus = 0); whole CPUs (resources.cpus ≥ 1) for it and for the
  generators, so each has cores of its own to borrow with and to lend. Elsewhere (Ray, GPUs,
  several ranks) the nodes are placed exactly as under ``disaggregated`` and ``areal-flow
  validate`` and ``run`` print why (``lending_blockers``), so one graph file runs everywhere.
  Any η: at η = 0 the trainer borrows the core the waiting generator leaves idle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from areal_flow.roles import GeneratorSpec, TrainerSpec
from areal_flow.spec import Graph

IDLE, BUSY = b"1", b"0"


class CoreLoan(BaseModel):
    """A generator replica's cores, lent to the trainer while its flag says idle."""

    model_config = ConfigDict(frozen=True)

    lender: str  # "<node>/<replica>", for logs
    cores: list[int]
    flag: str  # path of the lender's idle flag


def lending_blockers(graph: Graph) -> list[str]:
    """Why ``lending`` placement lends nothing in this graph ([] when it lends; see the module
    rules). A graph it cannot lend in runs placed exactly as ``disaggregated`` (the CLI prints
    these reasons): the same graph file then runs under Ray or on GPUs unchanged."""
    if graph.placement != "lending":
        return []
    trainers = [n for n in graph.nodes if isinstance(n, TrainerSpec)]
    generators = [n for n in graph.nodes if isinstance(n, GeneratorSpec)]
    if len(trainers) != 1 or not generators:
        return [f"{len(generators)} generator(s) and {len(trainers)} trainer(s), not one trainer"]
    trainer = trainers[0]
    why = []
    if graph.launcher != "local":
        why.append(f"launcher {graph.launcher!r} (lending needs 'local')")
    if getattr(trainer, "ranks", 1) != 1:
        why.append(f"{trainer.name!r} has ranks = {getattr(trainer, 'ranks', 1)} (lending needs 1)")
    if trainer.resources.gpus > 0:
        why.append(f"{trainer.name!r} trains on a GPU")
    for node in (trainer, *generators):
        if node.resources.cpus < 1:
            why.append(f"{node.name!r} has no core of its own (resources.cpus < 1)")
    return why


def plan_loans(
    graph: Graph, cores: dict[tuple[str, int], list[int]], run_dir: Path
) -> tuple[dict[tuple[str, int], str], list[CoreLoan]]:
    """Under ``lending``: each generator replica's flag path, and the loans the trainer gets
    (every generator replica that has cores); ({}, []) otherwise."""
    if graph.placement != "lending" or lending_blockers(graph):
        return {}, []
    flags: dict[tuple[str, int], str] = {}
    loans = []
    for node in graph.nodes:
        if not isinstance(node, GeneratorSpec):
            continue
        for r in range(node.replicas):
            key = (node.name, r)
            if not cores.get(key):
                continue
            flags[key] = str(Path(run_dir) / "lending" / f"{node.name}-{r}")
            loans.append(CoreLoan(lender=f"{node.name}/{r}", cores=cores[key], flag=flags[key]))
    return flags, loans


class IdleFlag:
    """The lender's side: one byte saying whether this replica is idle. Starts busy."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.idle: bool | None = None
        self.set(False)

    def set(self, idle: bool) -> None:
        if idle != self.idle:
            os.pwrite(self.fd, IDLE if idle else BUSY, 0)
            self.idle = idle

    def close(self) -> None:
        os.close(self.fd)


class Borrower:
    """The trainer's side: its torch thread count, adjusted to the lenders' flags.

    ``attach`` hooks the model's layer stack so ``adjust`` runs before each layer's forward
    and backward on the thread that computes; ``release`` (same thread) returns to the own
    threads at the end of a step; ``take_borrowed_s`` is the borrowed compute time since the
    last call."""

    def __init__(self, own_threads: int, loans: list[CoreLoan]) -> None:
        self.own = own_threads
        self.loans = loans
        self.fds: list[int | None] = [None] * len(loans)
        self.since = time.perf_counter()
        self.borrowed_s = 0.0

    def lent_cores(self) -> int:
        """Cores of the lenders whose flag says idle now (a flag not written yet: busy)."""
        total = 0
        for i, loan in enumerate(self.loans):
            if self.fds[i] is None:
                try:
                    self.fds[i] = os.open(loan.flag, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            if os.pread(self.fds[i], 1, 0) == IDLE:  # type: ignore[arg-type]
                total += len(loan.cores)
        return total

    def adjust(self) -> None:
        self._set(self.own + self.lent_cores())

    def release(self) -> None:
        self._set(self.own)

    def _set(self, threads: int) -> None:
        import torch

        now = time.perf_counter()
        current = torch.get_num_threads()  # this (the computing) thread's count
        if current > self.own:
            self.borrowed_s += now - self.since
        self.since = now
        if threads != current:
            torch.set_num_threads(threads)

    def take_borrowed_s(self) -> float:
        taken, self.borrowed_s = self.borrowed_s, 0.0
        return taken

    def attach(self, model: Any) -> None:
        """Hook every layer of the model's layer stack (its longest ``ModuleList``; the whole
        model when it has none)."""
        for layer in layer_stack(model):
            layer.register_forward_pre_hook(lambda *_: self.adjust())
            layer.register_forward_hook(self._on_output)

    def _on_output(self, module: Any, args: Any, output: Any) -> None:
        tensor = output[0] if isinstance(output, tuple) else output
        if getattr(tensor, "requires_grad", False):
            tensor.register_hook(self._in_backward)  # runs as backward reaches this layer

    def _in_backward(self, grad: Any) -> None:
        self.adjust()

    def close(self) -> None:
        for fd in self.fds:
            if fd is not None:
                os.close(fd)
        self.fds = [None] * len(self.loans)


def layer_stack(model: Any) -> list[Any]:
    import torch

    stacks = [list(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(stacks, key=len) if stacks else [model]
