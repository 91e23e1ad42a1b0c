"""The node contract: what a node author writes. The runtime owns sockets and the loop.

Rules:
- ``setup(ctx)`` loads models and opens pools; ``teardown()`` releases them. Either may be
  ``async def``.
- A **transform** implements ``process(batch) -> batch | None`` (``None`` drops it). It may be
  ``async def``; the runtime then keeps up to ``concurrency`` calls in flight. Rows dropped
  between two trajectory record types (rollout/scored) give their staleness capacity back.
- A **source** implements a non-blocking ``next_batch()``; the runtime calls it only when
  downstream credit and the staleness gate allow. ``None`` means nothing right now;
  ``exhausted`` says the source will never produce again.
- A **streaming** node implements ``async def run(inputs)`` yielding output batches whenever
  they are ready (generator, trainer): many-to-many, not one-for-one.
- A node with a ``weights`` input port gets every weight notice through ``on_weights``.
- Nodes with one output port return/yield batches; several output ports return/yield
  ``{port: batch}``.
- A node is generic in its config: ``class Trainer(Streaming[TrainerConfig])`` makes
  ``self.config`` a ``TrainerConfig`` to the type checker, with no cast. The parameter is
  covariant (a node only reads its config), so every node is a ``Node[NodeSpec]`` to the runtime.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeAlias, TypeVar

import pyarrow as pa

from areal_flow.spec import Graph, NodeSpec

if TYPE_CHECKING:
    from areal_flow.lending import CoreLoan
    from areal_flow.runtime.plan import RankPlacement

Output: TypeAlias = pa.RecordBatch | dict[str, pa.RecordBatch] | None
ConfigT = TypeVar("ConfigT", bound=NodeSpec, covariant=True)


class Metrics:
    """Per-node metrics: gauges overwrite, counters add. The runtime ships them to the driver."""

    def __init__(self) -> None:
        self.gauges: dict[str, float] = {}
        self.counters: dict[str, float] = {}

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = float(value)

    def count(self, name: str, amount: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + amount

    def snapshot(self) -> dict[str, float]:
        return {**self.counters, **self.gauges}


@dataclass
class NodeContext:
    """What a node knows about where it runs. Built by the runtime, passed to ``setup``."""

    config: NodeSpec
    replica: int
    replicas: int
    run_dir: Path
    seed: int
    device: str = "cpu"
    cpus: list[int] = field(default_factory=list)  # cores this replica may use ([] = shared)
    version: int = 0  # current policy version, kept up to date by the runtime
    metrics: Metrics = field(default_factory=Metrics)
    resume_state: dict[str, Any] | None = None  # the node's saved state when resuming a run
    graph: Graph | None = None  # the whole spec, for run-wide settings (staleness, seed)
    ranks: RankPlacement | None = None  # where ranks 1..N−1 start (None: as child processes)
    idle_flag: str | None = None  # lending placement, a generator: where it says it is idle
    loans: list[CoreLoan] = field(default_factory=list)  # lending, the trainer: cores to borrow

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"areal_flow.node.{self.name}.{self.replica}")


class Node(ABC, Generic[ConfigT]):
    """Base of every node (abstract: the kinds below add the methods). Subclass one of Source,
    Transform or Streaming, with the node's config class as the parameter."""

    #: Most ``process`` calls in flight at once (async transforms only).
    concurrency: ClassVar[int] = 1

    def __init__(self, config: ConfigT) -> None:
        self.config: ConfigT = config
        self.ctx: NodeContext | None = None

    def setup(self, ctx: NodeContext) -> Awaitable[None] | None:
        self.ctx = ctx
        return None

    def on_weights(self, version: int, ref: dict[str, Any]) -> Awaitable[None] | None:
        """A new policy version is available at ``ref`` (a row of the weights record)."""
        return None

    def state(self) -> dict[str, Any] | None:
        """JSON-able state saved in checkpoints (positions, counters); None if stateless."""
        return None

    def teardown(self) -> Awaitable[None] | None:
        return None


class Source(Node[ConfigT]):
    """Produces batches when asked; never blocks."""

    @abstractmethod
    def next_batch(self) -> Output:
        """The next batch, or None when nothing is ready now. Must not block."""

    @property
    def exhausted(self) -> bool:
        return False

    def next_groups(self) -> int:
        """Prompt groups (rows of a prompt batch) the next batch will hold: the staleness gate
        admits the batch only if they all fit."""
        return 1


class Transform(Node[ConfigT]):
    """One batch in, at most one batch out."""

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> Output | Awaitable[Output]:
        """The output for one input batch; None drops it."""


class Streaming(Node[ConfigT]):
    """Consumes an async stream of input batches, yields outputs whenever ready."""

    @abstractmethod
    def run(self, inputs: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[Output]:
        """An async generator: consume ``inputs``, yield outputs whenever ready."""
