"""One node replica: its process set-up and its loop (receive, process, send, report).

Rules:
- The worker owns the loop; node code never sees a socket. Sync ``setup``/``process`` run in a
  thread so heartbeats keep flowing while a model loads or a batch is processed.
- Staleness accounting is done here, not in nodes: a gated source asks the driver before each
  batch; rows dropped between trajectory record types are reported as rejected; batches
  reaching a ``trainer`` are reported as accepted with their version lag; weight notices leaving
  a node advance the global policy version.
- Any exception is reported to the driver (type, message, traceback) and the process exits 1.
- Run as a process: ``python -m areal_flow.runtime.worker PLAN NODE REPLICA``. The process
  first pins itself to its cores and sets thread counts, before torch is imported.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import zmq.asyncio

from areal_flow.node import Node, NodeContext, Output, Source, Streaming, Transform
from areal_flow.registry import node_class
from areal_flow.runtime.control import HEARTBEAT_S, identity
from areal_flow.runtime.link import ControlLink
from areal_flow.runtime.plan import ReplicaPlan, RunPlan
from areal_flow.runtime.ports import Inbox, Outbox, Received
from areal_flow.spec import Graph

TRAJECTORY_RECORDS = ("rollout", "scored")
IDLE_SOURCE_S = 0.01  # a source with nothing ready is asked again after this


class Worker:
    """Runs one replica of one node until its inputs end, the run stops, or it fails."""

    def __init__(
        self, plan: RunPlan, replica: ReplicaPlan, zctx: zmq.asyncio.Context, node: Node
    ) -> None:
        self.plan = plan
        self.replica = replica
        self.node = node
        self.spec = node.config
        self.ctx = NodeContext(
            config=node.config,
            replica=replica.replica,
            replicas=replica.replicas,
            run_dir=Path(plan.run_dir),
            seed=int(plan.graph.get("seed", 0)),
            device="cuda" if replica.gpus else "cpu",
            cpus=replica.cpus,
            graph=Graph.model_validate(plan.graph),
        )
        self.link = ControlLink(
            zctx, plan.control, identity(replica.node, replica.replica), self._set_version
        )
        self.inbox = Inbox(zctx, replica.inputs, replica.node)
        self.outbox = Outbox(zctx, replica.outputs, replica.key)
        self.stats = {"batches_in": 0.0, "batches_out": 0.0, "rows_in": 0.0, "rows_out": 0.0}
        self.busy_s = 0.0

    def _set_version(self, version: int) -> None:
        self.ctx.version = max(self.ctx.version, version)

    async def serve(self) -> int:
        self.link.start_reading()
        await self.link.send({"type": "hello", "pid": os.getpid()})
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        try:
            await _maybe_await_in_thread(self.node.setup, self.ctx)
            await self.link.send({"type": "ready"})
            await _first(self.link.started.wait(), self.link.stopping.wait())
            if not self.link.stopping.is_set():
                await _first(self._main(), self.link.stopping.wait())
            await self.link.send({"type": "finished", "metrics": self._metrics()})
            return 0
        except Exception as err:
            await self.link.send(
                {
                    "type": "error",
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                }
            )
            raise
        finally:
            heartbeat.cancel()
            await _maybe_await_in_thread(self.node.teardown)
            self.inbox.close()
            self.outbox.close()
            self.link.close()

    async def _main(self) -> None:
        # A node fed only by weight edges (the publisher) relays them: they are its data.
        self.data_wires = self.inbox.data_wires or self.inbox.weight_wires
        relays = not self.inbox.data_wires
        weights = asyncio.create_task(
            self._weights_loop() if not relays else asyncio.sleep(0), name="weights"
        )
        try:
            if isinstance(self.node, Source):
                await self._source_loop(self.node)
            elif isinstance(self.node, Streaming):
                await self._streaming_loop(self.node)
            elif isinstance(self.node, Transform):
                await self._transform_loop(self.node)
            else:
                raise TypeError(
                    f"{type(self.node).__name__} must subclass Source, Transform or Streaming"
                )
            await self.outbox.end()
        finally:
            weights.cancel()

    # -- node kinds -------------------------------------------------------------------------

    async def _source_loop(self, node: Source) -> None:
        gated = any(w.record == "prompt" for w in self.replica.outputs)
        while not self.link.draining.is_set() and not node.exhausted:
            cost = node.next_cost()
            if gated and not await self.link.admit(cost):
                break
            out = await self._timed(node.next_batch)
            if out is None:
                if gated:
                    await self.link.send({"type": "rejected", "n": cost})
                await asyncio.sleep(IDLE_SOURCE_S)
                continue
            await self._emit(out)

    async def _transform_loop(self, node: Transform) -> None:
        limit = max(1, type(node).concurrency)
        pending: set[asyncio.Task[None]] = set()
        async for item in self.inbox.stream(self.data_wires):
            await self._received(item)
            pending.add(asyncio.create_task(self._transform_one(node, item)))
            if len(pending) >= limit:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        for task in pending:
            await task

    async def _transform_one(self, node: Transform, item: Received) -> None:
        out = await self._timed(node.process, item.batch)
        await self._account_drops(item, out)
        await self._emit(out)

    async def _streaming_loop(self, node: Streaming) -> None:
        async def inputs() -> AsyncIterator[pa.RecordBatch]:
            async for item in self.inbox.stream(self.data_wires):
                await self._received(item)
                yield item.batch

        async for out in node.run(inputs()):
            await self._emit(out)

    async def _weights_loop(self) -> None:
        async for item in self.inbox.stream(self.inbox.weight_wires):
            for row in item.batch.to_pylist():
                await _maybe_await_in_thread(self.node.on_weights, int(row["version"]), row)

    # -- accounting -------------------------------------------------------------------------

    async def _received(self, item: Received) -> None:
        self.stats["batches_in"] += 1
        self.stats["rows_in"] += item.batch.num_rows
        if self.spec.role == "trainer" and item.wire.record in TRAJECTORY_RECORDS:
            versions = _oldest_versions(item.batch)
            await self.link.send(
                {"type": "accepted", "n": item.batch.num_rows, "versions": versions}
            )

    async def _account_drops(self, item: Received, out: Output) -> None:
        if item.wire.record not in TRAJECTORY_RECORDS:
            return
        kept = 0
        for wire in self.replica.outputs:
            if wire.record in TRAJECTORY_RECORDS:
                kept = _rows(out)
                break
        else:
            return
        if kept < item.batch.num_rows:
            await self.link.send({"type": "rejected", "n": item.batch.num_rows - kept})

    async def _emit(self, out: Output) -> None:
        # The driver learns a new policy version before any generator can load it, so no
        # trajectory ever claims a version newer than the staleness gate knows.
        version = _weights_version(out, self.replica.outputs)
        if version is not None:
            self._set_version(version)
            await self.link.send({"type": "version", "version": version})
        for _, batch in await self.outbox.emit(out, self.ctx.version):
            self.stats["batches_out"] += 1
            self.stats["rows_out"] += batch.num_rows

    async def _timed(self, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return await _maybe_await_in_thread(fn, *args)
        finally:
            self.busy_s += time.perf_counter() - start

    def _metrics(self) -> dict[str, float]:
        return {
            **self.stats,
            "busy_s": self.busy_s,
            "version": float(self.ctx.version),
            **self.inbox.depths(),
            **self.ctx.metrics.snapshot(),
        }

    async def _heartbeat(self) -> None:
        while True:
            await self.link.send({"type": "heartbeat", "metrics": self._metrics()})
            await asyncio.sleep(HEARTBEAT_S)


def _weights_version(out: Output, wires: list[Any]) -> int | None:
    """The newest version in a weights notice about to leave this node, if any."""
    if out is None:
        return None
    ports = {w.port for w in wires if w.record == "weights"}
    batches = (
        [out] if isinstance(out, pa.RecordBatch) else [b for p, b in out.items() if p in ports]
    )
    if isinstance(out, pa.RecordBatch) and not ports:
        return None
    versions = [
        int(pc.max(b.column("version")).as_py())
        for b in batches
        if "version" in b.schema.names and b.num_rows
    ]
    return max(versions) if versions else None


def _rows(out: Output) -> int:
    if out is None:
        return 0
    if isinstance(out, pa.RecordBatch):
        return out.num_rows
    return max((b.num_rows for b in out.values()), default=0)


def _oldest_versions(batch: pa.RecordBatch) -> list[int] | None:
    """Per trajectory, the oldest policy version among its tokens (its staleness)."""
    if "versions" not in batch.schema.names:
        return None
    return [min(v) if v else 0 for v in batch.column("versions").to_pylist()]


async def _maybe_await_in_thread(fn: Any, *args: Any) -> Any:
    """Await coroutine functions; run plain functions in a thread (keeps the loop alive)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result


async def _first(*coros: Any) -> None:
    """Run until the first of ``coros`` finishes; cancel the rest; re-raise its error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()


def build_node(plan: RunPlan, node_name: str) -> Node:
    """The node object for ``node_name``, its class found through the registry."""
    graph = Graph.model_validate(plan.graph)
    config = graph.node(node_name)
    return node_class(config)(config)


async def run_replica(plan: RunPlan, node_name: str, replica: int) -> int:
    zctx = zmq.asyncio.Context()
    try:
        worker = Worker(plan, plan.replica(node_name, replica), zctx, build_node(plan, node_name))
        return await worker.serve()
    finally:
        zctx.destroy(linger=0)


def pin_process(replica: ReplicaPlan) -> None:
    """Pin to the planned cores and size thread pools before heavy imports."""
    if replica.cpus:
        os.sched_setaffinity(0, replica.cpus)
    threads = str(max(1, len(replica.cpus) or len(os.sched_getaffinity(0))))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, replica.gpus))


def main(argv: list[str] | None = None) -> int:
    plan_path, node_name, index = argv or sys.argv[1:]
    plan = RunPlan.load(Path(plan_path))
    replica = plan.replica(node_name, int(index))
    pin_process(replica)
    # Ctrl-C belongs to the driver, which drains and stops replicas itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {replica.key} %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(run_replica(plan, node_name, int(index)))
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
