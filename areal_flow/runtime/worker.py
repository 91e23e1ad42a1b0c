"""One node replica: its process set-up and its loop (receive, process, send, report).

Rules:
- The worker owns the loop; node code never sees a socket. Sync ``setup``/``process`` run in a
  thread so heartbeats keep flowing while a model loads or a batch is processed.
- Staleness accounting is done here, not in nodes: a gated source asks the driver before each
  batch (``issuer.py``); rows dropped between trajectory record types are reported as rejected;
  batches reaching a ``trainer`` are reported as accepted with their version lag; weight notices
  leaving a node advance the global policy version (the driver keeps the newest notice).
- With the driver's ledger on, every replica also reports the prompt groups it takes and sends
  on, so the driver knows which groups die with a replica (``ledger.py``).
- A restarted replica catches up before it runs: the newest weights notice goes through
  ``on_weights`` and producers that already finished count as ended.
- A replica whose driver has been silent for ``DRIVER_SILENT_S`` stops (no orphan waits on a
  dead driver); as a process it exits after ``STOP_GRACE_S`` more, whatever its node is doing.
  Such a stop is a failure (``DriverSilent``, exit 1), never a finish: a driver that was only
  stalled and wakes up must not count its abandoned run as completed.
- Any exception is reported to the driver (type, message, traceback) and the process exits 1.
- A plan with ``curve`` on: the control link and every data socket use the run's CurveZMQ keys,
  loaded from ``run_dir/keys`` of this host (the driver's folder, or the copy the Ray actor
  wrote); a missing or loosely-permissioned key file stops the replica with the fix.
- Run as a process: ``python -m areal_flow.runtime.worker PLAN NODE REPLICA``. The process
  first pins itself to its cores and sets thread counts, before torch is imported. With
  ``startup_cpus`` (``plan.setup_apart``) it sets up on those cores; once the driver starts the
  run, every thread still on them, its own and its child processes' (a verifier pool), moves to
  its running cores. A thread that chose other cores (an engine's bound threads) keeps them.
  Launchers
  start it under the replica's reaper (``reaper.py``): it dies with the reaper, and whatever it
  spawns (vLLM's engine processes, verifier pools) is killed when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import zmq.asyncio

from areal_flow.node import Node, NodeContext, Output, Source, Streaming, Transform
from areal_flow.registry import node_class
from areal_flow.roles import TrainerSpec
from areal_flow.runtime.control import DRIVER_SILENT_S, HEARTBEAT_S, STOP_GRACE_S, identity
from areal_flow.runtime.issuer import IDLE_SOURCE_S, Issuer, group_rows
from areal_flow.runtime.link import ControlLink
from areal_flow.runtime.messages import (
    Accepted,
    ErrorReport,
    Finished,
    Heartbeat,
    Hello,
    Loaded,
    Ready,
    Rejected,
    Sent,
    Took,
    VersionReport,
)
from areal_flow.runtime.plan import ReplicaPlan, RunPlan
from areal_flow.runtime.ports import Inbox, Outbox, Received
from areal_flow.runtime.reaper import descendants, process_table
from areal_flow.spec import Graph, NodeSpec
from areal_flow.transport.curve import RunKeys, load_run_keys, stop_authenticator

TRAJECTORY_RECORDS = ("rollout", "scored")
GROUP_RECORDS = ("prompt", *TRAJECTORY_RECORDS)  # records whose groups the ledger follows


class DriverSilent(RuntimeError):
    """This replica stopped because its driver fell silent for ``DRIVER_SILENT_S``."""


class Worker:
    """Runs one replica of one node until its inputs end, the run stops, or it fails."""

    def __init__(
        self,
        plan: RunPlan,
        replica: ReplicaPlan,
        zctx: zmq.asyncio.Context,
        node: Node[NodeSpec],
        hard_exit: bool = False,
        keys: RunKeys | None = None,
        on_start: Callable[[], None] | None = None,
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
            resume_state=replica.resume_state,
            graph=Graph.model_validate(plan.graph),
            ranks=replica.ranks,
            idle_flag=replica.idle_flag,
            loans=replica.loans,
        )
        self.hard_exit = hard_exit  # a process (not a task of the driver's loop)
        self.on_start = on_start  # called once the driver starts the run
        self.ledger = False  # the driver follows prompt groups (told at start)
        self.link = ControlLink(
            zctx, plan.control, identity(replica.node, replica.replica), self._set_version, keys
        )
        self.inbox = Inbox(zctx, replica.inputs, replica.node, keys)
        self.outbox = Outbox(zctx, replica.outputs, replica.key, keys)
        self.stats = {"batches_in": 0.0, "batches_out": 0.0, "rows_in": 0.0, "rows_out": 0.0}
        self.busy_s = 0.0
        self.driver_silent_s: float | None = None  # set when this replica gave up on the driver

    def _set_version(self, version: int) -> None:
        self.ctx.version = max(self.ctx.version, version)

    async def serve(self) -> int:
        self.link.start_reading()
        await self.link.send(Hello(pid=os.getpid()))
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        try:
            await _maybe_await_in_thread(self.node.setup, self.ctx)
            await self.link.send(Ready())
            await _first(self.link.started.wait(), self.link.stopping.wait())
            if self.on_start is not None and self.link.started.is_set():
                self.on_start()
            if not self.link.stopping.is_set():
                await _first(self._main(), self.link.stopping.wait())
            if self.driver_silent_s is not None:
                raise DriverSilent(
                    f"stopped: the driver was silent for {self.driver_silent_s:.0f} s (it died, "
                    "or its machine was too loaded to answer)"
                )
            await self.link.send(Finished(metrics=self._metrics()))
            return 0
        except Exception as err:
            await self.link.send(
                ErrorReport(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            )
            raise
        finally:
            heartbeat.cancel()
            await _maybe_await_in_thread(self.node.teardown)
            self.inbox.close()
            self.outbox.close()
            self.link.close()

    async def _catch_up(self) -> None:
        """What a (re)started replica learns at start: ledger on, producers that already
        finished, and the newest weights notice."""
        start = self.link.start
        assert start is not None, "a replica runs only once the driver's start message came"
        self.ledger = start.ledger
        for edge, count in start.ended.items():
            self.inbox.assume_ended(edge, count)
        notice = start.weights
        if notice is not None and self.inbox.weight_wires and self.inbox.data_wires:
            await _maybe_await_in_thread(self.node.on_weights, int(notice["version"]), notice)

    async def _main(self) -> None:
        await self._catch_up()
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

    async def _source_loop(self, node: Source[NodeSpec]) -> None:
        gated = [w.port for w in self.replica.outputs if w.record == "prompt"]
        if gated:
            issuer = Issuer(
                node,
                gated[0],
                self.link,
                self._emit,
                self._timed,
                skip=self.replica.skip_groups,
                ledger=self.ledger,
            )
            await issuer.run()
            return
        while not self.link.draining.is_set() and not node.exhausted:
            out = await self._timed(node.next_batch)
            if out is None:
                await asyncio.sleep(IDLE_SOURCE_S)
                continue
            await self._emit(out)

    async def _transform_loop(self, node: Transform[NodeSpec]) -> None:
        limit = max(1, type(node).concurrency)
        pending: set[asyncio.Task[None]] = set()
        try:
            async for item in self.inbox.stream(self.data_wires):
                await self._received(item)
                pending.add(asyncio.create_task(self._transform_one(node, item)))
                if len(pending) >= limit:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            for task in pending:
                await task
        finally:  # stopped: calls in flight must not send on sockets about to close
            for task in pending:
                task.cancel()

    async def _transform_one(self, node: Transform[NodeSpec], item: Received) -> None:
        out = await self._timed(node.process, item.batch)
        await self._account_drops(item, out)
        await self._emit(out)

    async def _streaming_loop(self, node: Streaming[NodeSpec]) -> None:
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
                # The driver's staleness gate admits for versions the generators really serve.
                await self.link.send(Loaded(version=int(row["version"])))

    # -- accounting -------------------------------------------------------------------------

    async def _received(self, item: Received) -> None:
        self.stats["batches_in"] += 1
        self.stats["rows_in"] += item.batch.num_rows
        batch = item.batch
        if isinstance(self.spec, TrainerSpec) and item.wire.record in TRAJECTORY_RECORDS:
            versions = _oldest_versions(batch)
            rows = batch.column("group_id").to_pylist()
            await self.link.send(Accepted(n=batch.num_rows, versions=versions, rows=rows))
        elif self.ledger and item.wire.record in GROUP_RECORDS:
            await self.link.send(Took(groups=group_rows(batch)))

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
            dropped = group_rows(item.batch)
            for group, rows in _trajectory_groups(out, self.replica.outputs).items():
                dropped[group] = dropped.get(group, 0) - rows
            groups = {g: n for g, n in dropped.items() if n > 0}
            await self.link.send(Rejected(n=item.batch.num_rows - kept, groups=groups))

    async def _emit(self, out: Output) -> None:
        # The driver learns a new policy version before any generator can load it, so no
        # trajectory ever claims a version newer than the staleness gate knows.
        notice = _weights_notice(out, self.replica.outputs)
        if notice is not None:
            version = int(notice["version"])
            self._set_version(version)
            await self.link.send(VersionReport(version=version, notice=notice))
        records = {w.port: w.record for w in self.replica.outputs}
        for port, batch in await self.outbox.emit(out, self.ctx.version):
            self.stats["batches_out"] += 1
            self.stats["rows_out"] += batch.num_rows
            relay = not isinstance(self.node, Source)
            if self.ledger and records.get(port) in GROUP_RECORDS and relay:
                await self.link.send(Sent(groups=group_rows(batch)))

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
            "rss_mb": _rss_mb(),
            "version": float(self.ctx.version),
            **self.inbox.metrics(),  # depth, arrivals, rejections by reason per input edge
            **self.ctx.metrics.snapshot(),
        }

    async def _heartbeat(self) -> None:
        while self.link.heard_s < DRIVER_SILENT_S:
            await self.link.send(Heartbeat(metrics=self._metrics()))
            await asyncio.sleep(HEARTBEAT_S)
        self.ctx.log.error(
            "the driver has been silent for %.0f s (it died?): stopping", self.link.heard_s
        )
        self.driver_silent_s = self.link.heard_s
        self.link.stopping.set()
        self.link.draining.set()
        if self.hard_exit:  # a wedged node must not keep the process alive
            timer = threading.Timer(STOP_GRACE_S, os._exit, args=(1,))
            timer.daemon = True
            timer.start()


def _weights_notice(out: Output, wires: list[Any]) -> dict[str, Any] | None:
    """The newest row of a weights notice about to leave this node, if any."""
    if out is None:
        return None
    ports = {w.port for w in wires if w.record == "weights"}
    batches = (
        [out] if isinstance(out, pa.RecordBatch) else [b for p, b in out.items() if p in ports]
    )
    if isinstance(out, pa.RecordBatch) and not ports:
        return None
    rows = [
        b.slice(int(pc.index(b.column("version"), pc.max(b.column("version"))).as_py()), 1)
        for b in batches
        if "version" in b.schema.names and b.num_rows
    ]
    notices = [r.to_pylist()[0] for r in rows]
    return max(notices, key=lambda n: int(n["version"])) if notices else None


def _trajectory_groups(out: Output, wires: list[Any]) -> dict[str, int]:
    """Group id → rows of the trajectory batches in ``out``."""
    if out is None:
        return {}
    ports = {w.port for w in wires if w.record in TRAJECTORY_RECORDS}
    batches = (
        [out] if isinstance(out, pa.RecordBatch) else [b for p, b in out.items() if p in ports]
    )
    counts: dict[str, int] = {}
    for batch in batches:
        for group, rows in group_rows(batch).items():
            counts[group] = counts.get(group, 0) + rows
    return counts


def _rows(out: Output) -> int:
    if out is None:
        return 0
    if isinstance(out, pa.RecordBatch):
        return out.num_rows
    return max((b.num_rows for b in out.values()), default=0)


def _oldest_versions(batch: pa.RecordBatch) -> list[int] | None:
    """Per trajectory, the oldest policy version among its sampled tokens (its staleness)."""
    from areal_flow.rl.versions import sampled_versions

    if "versions" not in batch.schema.names:
        return None
    versions = batch.column("versions").to_pylist()
    if "loss_mask" in batch.schema.names:
        versions = sampled_versions(versions, batch.column("loss_mask").to_pylist())
    return [min(v) if v else 0 for v in versions]


def _rss_mb() -> float:
    """This process's resident memory (Linux ``/proc``; 0 where unavailable)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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


def build_node(plan: RunPlan, node_name: str) -> Node[NodeSpec]:
    """The node object for ``node_name``, its class found through the registry."""
    graph = Graph.model_validate(plan.graph)
    config = graph.node(node_name)
    return node_class(config)(config)


async def run_replica(
    plan: RunPlan,
    node_name: str,
    replica: int,
    hard_exit: bool = False,
    on_start: Callable[[], None] | None = None,
) -> int:
    zctx = zmq.asyncio.Context()
    try:
        keys = load_run_keys(plan.run_dir) if plan.curve else None
        plan.load_user_code()
        node = build_node(plan, node_name)
        worker = Worker(
            plan, plan.replica(node_name, replica), zctx, node, hard_exit, keys, on_start
        )
        return await worker.serve()
    finally:
        stop_authenticator(zctx)
        zctx.destroy(linger=0)


def pin_process(replica: ReplicaPlan) -> set[int]:
    """Pin to the planned cores (and any cores it may borrow) and size thread pools to its
    own cores before heavy imports. Returns those running cores; with ``startup_cpus`` the
    process is on the set-up cores until ``move_threads`` gives it the running ones."""
    if replica.cpus:
        os.sched_setaffinity(0, [*replica.cpus, *(c for loan in replica.loans for c in loan.cores)])
    running = os.sched_getaffinity(0)
    threads = str(max(1, len(replica.cpus) or len(running)))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, replica.gpus))
    if replica.startup_cpus:
        os.sched_setaffinity(0, replica.startup_cpus)
    return running


def move_threads(setup: set[int], cores: set[int]) -> None:
    """Every thread on the ``setup`` cores, of this process and of its descendants, onto
    ``cores``. An affinity belongs to a thread, and new threads and processes copy their
    creator's, so everything started during set-up is there; a thread on other cores chose them
    (vLLM binds each of its OpenMP threads to one core) and stays."""
    for pid in [os.getpid(), *descendants(os.getpid(), process_table())]:
        with contextlib.suppress(FileNotFoundError):  # a process that ended meanwhile
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                    if os.sched_getaffinity(tid) == setup:
                        os.sched_setaffinity(tid, cores)


def main(argv: list[str] | None = None) -> int:
    plan_path, node_name, index = argv or sys.argv[1:]
    plan = RunPlan.load(Path(plan_path))
    replica = plan.replica(node_name, int(index))
    running = pin_process(replica)
    # Ctrl-C belongs to the driver, which drains and stops replicas itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {replica.key} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger(__name__).info(
        "cores %s, %s threads",
        sorted(running) if replica.cpus else "unpinned",
        os.environ["OMP_NUM_THREADS"],
    )
    if replica.startup_cpus:
        logging.getLogger(__name__).info("sets up on cores %s", replica.startup_cpus)
    try:
        setup = set(replica.startup_cpus)
        on_start = partial(move_threads, setup, running) if setup else None
        return asyncio.run(
            run_replica(plan, node_name, int(index), hard_exit=True, on_start=on_start)
        )
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
