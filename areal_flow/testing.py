"""Generic nodes for tests and experiments, and an in-process runner.

Rules:
- ``list_source`` emits numbered rows (``id``, ``payload``) or rows you give it; ``function``
  applies an importable function ``module:name`` to each batch; ``collect_sink`` writes every
  batch it receives to ``sinks/<name>.<replica>.arrow`` in the run folder (Arrow IPC stream),
  which ``read_sink`` reads back. Their ports carry ``any`` record type.
- ``run_in_process(graph)`` runs a whole graph in this process (every replica an asyncio task)
  with the same driver, sockets and worker code as real processes — fast tests for light nodes.
- ``tiny_overrides(model)`` shrinks a math-shaped graph (math_rl's node names) to the tiny
  random model on the hf engine, two steps: tests and the GPU check's CPU dry run use it.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from areal_flow.node import Output, Source, Transform
from areal_flow.roles import SinkSpec, SourceSpec, TransformSpec
from areal_flow.spec import Graph, Port, Resources, light_resources


class ListSourceConfig(SourceSpec):
    """Emits ``count`` numbered rows (or the given ``rows``), ``batch_rows`` per batch."""

    outputs: ClassVar[dict[str, Port]] = {"out": Port(record="any")}

    kind: Literal["list_source"] = "list_source"
    count: int | None = Field(
        10, ge=0, description="Numbered rows to emit (ignored if rows given); null = endless."
    )
    rows: list[dict[str, Any]] | None = Field(None, description="Explicit rows to emit.")
    batch_rows: int = Field(1, ge=1, description="Rows per batch.")
    payload_bytes: int = Field(0, ge=0, description="Size of each numbered row's payload.")


class ListSource(Source[ListSourceConfig]):
    """Splits its rows into batches; replica r of R takes every R-th batch."""

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        cfg = self.config
        self._endless = cfg.rows is None and cfg.count is None
        self._next = 0
        if self._endless:
            self._payload = pa.array([b"x" * cfg.payload_bytes] * cfg.batch_rows, pa.binary())
            return
        if cfg.rows is not None:
            table = pa.Table.from_pylist(cfg.rows)
        else:
            count = cfg.count or 0
            ids = pa.array(range(count), pa.int64())
            payload = pa.array([b"x" * cfg.payload_bytes] * count, pa.binary())
            table = pa.table({"id": ids, "payload": payload})
        batches = table.to_batches(max_chunksize=cfg.batch_rows)
        self._batches = batches[ctx.replica :: ctx.replicas]

    def next_batch(self) -> Output:
        if self._endless:
            assert self.ctx is not None
            rows = self.config.batch_rows
            first = (self._next * self.ctx.replicas + self.ctx.replica) * rows
            self._next += 1
            ids = pa.array(range(first, first + rows), pa.int64())
            return pa.RecordBatch.from_arrays([ids, self._payload], ["id", "payload"])
        if self._next >= len(self._batches):
            return None
        batch = self._batches[self._next]
        self._next += 1
        return batch

    @property
    def exhausted(self) -> bool:
        return not self._endless and self._next >= len(self._batches)


class FunctionConfig(TransformSpec):
    """Applies ``fn`` (``module:function``, batch → batch or None) to every batch."""

    inputs: ClassVar[dict[str, Port]] = {"in": Port(record="any")}
    outputs: ClassVar[dict[str, Port]] = {"out": Port(record="any")}
    stateless: ClassVar[bool] = True

    kind: Literal["function"] = "function"
    fn: str = Field(description="Importable 'package.module:function'.")
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")

    @field_validator("fn")
    @classmethod
    def _importable_form(cls, value: str) -> str:
        module, sep, name = value.partition(":")
        if not sep or not module or not name.isidentifier():
            raise ValueError(f"fn {value!r} must look like 'package.module:function'")
        return value


def import_function(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise LookupError(f"{path}: {module} has no function {name!r}")
    return fn


class Function(Transform[FunctionConfig]):
    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self.fn = import_function(self.config.fn)

    def process(self, batch: pa.RecordBatch) -> Output:
        result: Output = self.fn(batch)
        return result


class CollectSinkConfig(SinkSpec):
    """Writes every batch it receives to the run folder."""

    inputs: ClassVar[dict[str, Port]] = {"in": Port(record="any")}

    kind: Literal["collect_sink"] = "collect_sink"
    delay_s: float = Field(0.0, ge=0, description="Pause after each batch (a slow consumer).")
    keep: bool = Field(True, description="Write batches to the run folder; false only counts.")


class CollectSink(Transform[CollectSinkConfig]):
    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        folder = ctx.run_dir / "sinks"
        folder.mkdir(parents=True, exist_ok=True)
        self._path = folder / f"{ctx.name}.{ctx.replica}.arrow"
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._file = self._path.open("wb")

    async def process(self, batch: pa.RecordBatch) -> Output:
        # With keep off the worker's counters (batches_in, rows_in) are the only record.
        if self.config.keep:
            if self._writer is None:
                self._writer = pa.ipc.new_stream(self._file, batch.schema)
            self._writer.write_batch(batch)
            self._file.flush()
        if self.config.delay_s:
            await asyncio.sleep(self.config.delay_s)
        return None

    def teardown(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._file.close()


def passthrough(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The identity, for ``function`` nodes that only move data (benchmarks, soak runs)."""
    return batch


def read_sink(run_dir: Path, name: str) -> pa.Table:
    """Everything the sink ``name`` received, all replicas, in arrival order per replica."""
    tables = []
    for path in sorted((run_dir / "sinks").glob(f"{name}.*.arrow")):
        if path.stat().st_size == 0:
            continue
        with pa.ipc.open_stream(path) as reader:
            tables.append(reader.read_all())
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables)


def run_in_process(graph: Graph, run_dir: Path, **kwargs: Any) -> Any:
    """Run ``graph`` with every replica an asyncio task of this process."""
    from areal_flow.runtime import run_graph

    return run_graph(graph, run_dir=run_dir, launcher="inprocess", **kwargs)


def tiny_overrides(model: Path, **extra: object) -> list[str]:
    """``--set`` items for a graph with prompts/gen/filter/trainer nodes (math_rl's names)."""
    settings: dict[str, object] = {
        "nodes.prompts.model": model,
        "nodes.prompts.group_size": 4,
        "nodes.gen.model": model,
        "nodes.gen.engine": "hf",
        "nodes.gen.sampling.max_tokens": 16,
        "nodes.trainer.model": model,
        "nodes.trainer.batch_groups": 2,
        "nodes.trainer.steps": 2,
        # A random model earns the same reward everywhere: keep uniform groups so it trains.
        "nodes.filter.drop_uniform_reward": "false",
        **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]
