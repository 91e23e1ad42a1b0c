"""Trainer: decoupled PPO on batches of scored groups; publishes weights after each step.

Rules: a batch holds whole groups; π_prox is recomputed with the current weights before the
update; version += 1 after every optimizer step, each followed by a one-row ``weights`` notice,
yielded once the version's file is ready — in version order, while the next step already runs
(the step itself waits only for the weights snapshot, ``publish_block_s``); checkpoints (every
``checkpoint_every`` steps, at the end, and on a clean stop) make a resumed run lose and repeat
nothing. The compute lives in ``areal_flow.train`` (imported in ``setup``, so validating a
graph never imports torch); this module holds the config and the async loop.
Ranks: with ``ranks`` > 1 this process is rank 0 of a data-parallel trainer
(``areal_flow.train.ranks``, ``areal_flow.train.sharded``) and still the one trainer the graph
sees; a rank that dies fails this node within ``WATCH_S``, idle or not, naming the rank.
Lending placement (``areal_flow.lending``): the compute thread adds idle generators' cores to
its own before each layer, and holds its own again after each step (``borrowed_s``).
Truncated responses: the filter's ``truncated`` option drops them; ``truncated='mask'`` here
keeps them in the group baseline without loss tokens (the filter must then 'keep' them).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from areal_flow.checks import trainer_temperature
from areal_flow.lending import Borrower
from areal_flow.node import NodeContext, Output, Streaming
from areal_flow.roles import GeneratorSpec, PublisherSpec
from areal_flow.spec import Graph
from areal_flow.train.config import TrainingConfig
from areal_flow.train.steplog import StepLog

if TYPE_CHECKING:
    from areal_flow.train.weight_writer import Published
    from areal_flow.train.weights import Store


class TrainerConfig(TrainingConfig):
    """Consumes scored trajectories, updates the policy, emits weight notices."""

    kind: Literal["trainer"] = "trainer"


class Trainer(Streaming[TrainerConfig]):
    """Collects ``batch_groups`` whole groups, prepares the batch (advantages, π_prox), runs its
    minibatch updates and yields one ``weights`` notice per optimizer step.

    Heavy work runs on one dedicated compute thread (``_compute``) so the event loop keeps receiving
    batches and heartbeating; input keeps being read into the pending queue while a step runs.
    The training loop is a task of its own (``_work``); ``run`` yields each version's notice
    when its background write completes, so the trainer never waits for a file, and a failed
    write fails the trainer. Backpressure still stops training: a consumer that takes no more
    notices holds one at ``yield``, ``NOTICES_AHEAD`` more wait in the queue, and the step after
    them waits to hand over its own. A resumed trainer first re-publishes its current version,
    so generators that started from the initial model switch to the resumed policy.
    """

    NOTICES_AHEAD = 1  # queued notices beyond the one being yielded
    WATCH_S = 0.2  # how often a trainer of several ranks looks for a dead one

    def setup(self, ctx: NodeContext) -> None:
        import torch

        from areal_flow.train.session import TrainingSession

        super().setup(ctx)
        cfg = self.config
        # Pinned cores, else the launcher's thread budget (Ray does not pin), else all cores.
        budget = len(ctx.cpus) or int(os.environ.get("OMP_NUM_THREADS", "0"))
        torch.set_num_threads(max(1, budget or len(os.sched_getaffinity(0))))
        ctx.log.info("training on %d thread(s)", torch.get_num_threads())
        resume = (ctx.resume_state or {}).get("checkpoint") or cfg.resume_from
        self.session = TrainingSession(
            cfg,
            temperature=trainer_temperature(ctx.graph, cfg),
            run_dir=ctx.run_dir,
            device=ctx.device,
            seed=ctx.seed,
            store=_weights_store(cfg.name, ctx.graph),
            weights_dtype=_weights_dtype(cfg.name, ctx.graph),
            resume_from=Path(resume) if resume else None,
            cpus=ctx.cpus,
            ranks=ctx.ranks,
        )
        ctx.log.info(
            "bf16 autocast %s (bf16: %s), publishing %s weights",
            "on" if self.session.policy.bf16 else "off",
            cfg.bf16,
            str(self.session.writer.dtype or "float32").removeprefix("torch."),
        )
        self.borrower = Borrower(torch.get_num_threads(), ctx.loans) if ctx.loans else None
        if self.borrower is not None:  # lending placement
            self.borrower.attach(self.session.policy.model)
            ctx.log.info("may borrow the cores of %s", [loan.lender for loan in ctx.loans])
        self.steplog = StepLog(ctx.run_dir, samples_every=cfg.samples_every)
        self.failed = False
        self.feeder: asyncio.Task[None] | None = None
        if self.session.step:
            ctx.log.info("resumed at step %d, version %d", self.session.step, self.session.version)

    async def run(self, inputs: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[Output]:
        published: asyncio.Queue[Future[Published] | None] = asyncio.Queue(self.NOTICES_AHEAD)
        work = asyncio.create_task(self._work(inputs, published), name="trainer-work")
        watch = asyncio.create_task(self._watch_ranks(), name="trainer-ranks")
        try:
            while (future := await _unless(watch, published.get())) is not None:
                # a failed write raises here
                done = await _unless(watch, asyncio.wrap_future(future))
                self.ctx.metrics.gauge("publish_ready_s", done.ready_s)  # type: ignore[union-attr]
                yield done.ref.batch()
            await _unless(watch, work)  # a training error raises here
        except Exception:
            self.failed = True  # no checkpoint of a state an error may have left half-updated
            raise
        finally:
            work.cancel()
            watch.cancel()
            if self.feeder is not None:
                self.feeder.cancel()

    async def _watch_ranks(self) -> None:
        """Raise once a rank of a data-parallel trainer died (checked every ``WATCH_S``, also
        while the trainer idles): the whole trainer stops, naming the rank."""
        from areal_flow.train.ranks import RankFailed

        if not self.session.policy.sharded:
            await asyncio.Event().wait()  # one process: nothing to watch; cancelled at the end
        while (failure := self.session.rank_failure()) is None:
            await asyncio.sleep(self.WATCH_S)
        raise RankFailed(failure)

    async def _work(
        self, inputs: AsyncIterator[pa.RecordBatch], published: asyncio.Queue[Any]
    ) -> None:
        """Train to the end, handing each publish future to ``run`` in version order."""
        try:
            session = self.session
            if session.step:
                await published.put(await self._compute(session.publish))
            arrived = asyncio.Event()
            self.feeder = asyncio.create_task(self._feed(inputs, arrived), name="trainer-feed")
            await self._train(arrived, published)
            if session.dirty:
                await self._compute(session.checkpoint, session.snapshot())
        finally:
            await published.put(None)  # also after an error, so ``run`` stops waiting

    async def _train(self, arrived: asyncio.Event, published: asyncio.Queue[Any]) -> None:
        assert self.ctx is not None and self.feeder is not None
        cfg = self.config
        session, metrics = self.session, self.ctx.metrics
        batch_metrics: dict[str, float] = {}
        while not session.done:
            if not session.has_batch:
                waited = time.perf_counter()
                groups = await self._next_groups(arrived)
                wait_s = time.perf_counter() - waited  # trainer idle: generation fell behind
                if not groups:
                    self.ctx.log.warning(
                        "input ended after %d of %d steps", session.step, cfg.steps
                    )
                    return
                batch_metrics = await self._compute(self._lending, session.prepare, groups)
                batch_metrics["wait_s"] = wait_s
                self._gauges(batch_metrics)
                self.steplog.maybe_write_samples(session.step + 1, pa.Table.from_batches(groups))
            future, step_metrics = await self._compute(self._lending, session.train_next)
            if self.borrower is not None:
                step_metrics["borrowed_s"] = self.borrower.take_borrowed_s()
            self._gauges(step_metrics)
            self.steplog.write(session.step, {**batch_metrics, **step_metrics})
            metrics.count("steps")
            metrics.count("trajectories_trained", step_metrics["sequences"])
            await published.put(future)
            if session.step % cfg.checkpoint_every == 0:
                await self._compute(session.checkpoint, session.snapshot())

    async def _next_groups(self, arrived: asyncio.Event) -> list[pa.RecordBatch]:
        """``batch_groups`` groups, waiting for them; fewer (maybe none) once input ended."""
        assert self.feeder is not None
        need = self.config.batch_groups
        while self.session.groups_ready < need and not self.feeder.done():
            await arrived.wait()
            arrived.clear()
        if self.feeder.done():
            self.feeder.result()  # an input error surfaces here
        return self.session.take_groups(need)

    async def _feed(self, inputs: AsyncIterator[pa.RecordBatch], arrived: asyncio.Event) -> None:
        assert self.ctx is not None
        try:
            async for batch in inputs:
                kept = self.session.add(batch)
                self.ctx.metrics.count("trajectories_received", kept)
                self.ctx.metrics.gauge("duplicates_dropped", self.session.duplicates)
                self.ctx.metrics.gauge("groups_pending", self.session.groups_ready)
                arrived.set()
        finally:
            arrived.set()

    async def _compute(self, fn: Any, *args: Any) -> Any:
        """Run torch work on the node's single compute thread. One thread, not a pool: every
        large tensor is then allocated by the same thread (one malloc arena), so memory freed
        by a step is reused by the next instead of piling up in per-thread arenas."""
        if not hasattr(self, "executor"):
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="trainer-compute")
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _lending(self, fn: Any, *args: Any) -> Any:
        """``fn`` on the compute thread; under lending placement it holds only its own
        threads afterwards (the borrowed ones go back between steps)."""
        try:
            return fn(*args)
        finally:
            if self.borrower is not None:
                self.borrower.release()

    def _gauges(self, values: dict[str, float]) -> None:
        assert self.ctx is not None
        for name, value in values.items():
            self.ctx.metrics.gauge(name, value)

    def state(self) -> dict[str, Any] | None:
        session = getattr(self, "session", None)
        return session.state() if session is not None else None

    async def teardown(self) -> None:
        """Checkpoint on a clean stop (not after an error): waits for a step still running and
        for the weights write in flight, then stops the writer."""
        session = getattr(self, "session", None)
        feeder = getattr(self, "feeder", None)  # a failed setup did not get that far
        if feeder is not None:
            feeder.cancel()
        if session is None:
            return
        if self.failed:
            session.abort()  # frees a compute thread waiting on the other ranks
        try:
            if not self.failed and session.dirty:
                await self._compute(session.checkpoint, session.snapshot())
        finally:
            await self._compute(session.close)
            borrower = getattr(self, "borrower", None)
            if borrower is not None:
                borrower.close()


async def _unless(watch: asyncio.Task[None], awaitable: Any) -> Any:
    """``awaitable``'s result, unless ``watch`` raises first (then that error)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    watch.result()  # raises: a watch ends only by an error
    raise AssertionError("the rank watch ended without an error")


def _weights_dtype(name: str, graph: Graph | None) -> str | None:
    """'bfloat16' when every generator fed by this trainer's publishers loads the model in
    bfloat16 (their load would round to it anyway, so publishing bf16 is exact and half the
    bytes); None (the trainer's own fp32) otherwise."""
    if graph is None:
        return None
    publishers = {e.split("dst")[0] for e in graph.edges if e.split("src")[0] == name}
    fed = {e.split("dst")[0] for e in graph.edges if e.split("src")[0] in publishers}
    generators = [n for n in graph.nodes if n.name in fed and isinstance(n, GeneratorSpec)]
    dtypes = {n.weights_dtype() for n in generators}
    return "bfloat16" if dtypes == {"bfloat16"} else None


def _weights_store(name: str, graph: Graph | None) -> Store:
    """The store of the weight publisher this trainer feeds ('shm' without one)."""
    if graph is None:
        return "shm"
    for edge in graph.edges:
        if edge.split("src")[0] == name:
            node = graph.node(edge.split("dst")[0])
            if isinstance(node, PublisherSpec):
                return node.store
    return "shm"
