"""Trainer: decoupled PPO on batches of scored groups; publishes weights after each step.

Rules: a batch holds whole groups; π_prox is recomputed with the current weights before the
update; version += 1 after every optimizer step, each followed by a one-row ``weights`` notice,
yielded once the version's file is ready — in version order, while the next step already runs
(the step itself waits only for the weights snapshot, ``publish_block_s``); checkpoints (every
``checkpoint_every`` steps, at the end, and on a clean stop) make a resumed run lose and repeat
nothing. The compute lives in ``areal_flow.train`` (imported in ``setup``, so validating a
graph never imports torch); this module holds the config and the async loop.
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
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from areal_flow.node import NodeContext, Output, Streaming
from areal_flow.spec import Graph, NodeSpec, Port, Spec
from areal_flow.train.steplog import StepLog

if TYPE_CHECKING:
    from areal_flow.train.weight_writer import Published
    from areal_flow.train.weights import Store


class DecoupledPPO(Spec):
    """The decoupled PPO objective (AReaL eq. 5) and its advantage estimator."""

    advantage: Literal["grpo", "drgrpo", "rloo"] = Field(
        "grpo", description="Group-relative advantage: GRPO, Dr.GRPO (no std) or RLOO."
    )
    batch_norm: bool = Field(False, description="Also whiten advantages across the batch.")
    eps_low: float = Field(0.2, gt=0, lt=1, description="Lower clip: ratio ≥ 1 − eps_low.")
    eps_high: float = Field(0.28, gt=0, le=10, description="Upper clip: ratio ≤ 1 + eps_high.")
    iw_cap: float | None = Field(5.0, gt=1, description="Cap on π_prox/π_behav; null = uncapped.")
    iw_cap_mode: Literal["clamp", "mask"] = Field(
        "mask", description="'clamp' the weight at the cap, or 'mask' tokens above it."
    )
    aggregation: Literal["token", "sequence"] = Field(
        "token", description="Mean over all tokens, or over tokens then sequences."
    )
    updates_per_batch: int = Field(
        1, ge=1, le=64, description="K minibatch updates (optimizer steps) per batch."
    )


class Optimizer(Spec):
    """AdamW with warm-up and a schedule."""

    lr: float = Field(2e-5, gt=0, le=1, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="Learning-rate decay after warm-up."
    )


class TrainerConfig(NodeSpec):
    """Consumes scored trajectories, updates the policy, emits weight notices."""

    inputs: ClassVar[dict[str, Port]] = {"scored": Port(record="scored")}
    outputs: ClassVar[dict[str, Port]] = {"weights": Port(record="weights", weights=True)}
    role: ClassVar[str] = "trainer"
    ends_run: ClassVar[bool] = True

    kind: Literal["trainer"] = "trainer"
    model: str = Field("smollm2", min_length=1, description="Initial policy (as the generator's).")
    batch_groups: int = Field(
        8, ge=1, le=4096, description="Prompt groups per training step (B = groups × n)."
    )
    steps: int = Field(50, ge=1, description="Optimizer steps; the run stops after the last.")
    algo: DecoupledPPO = Field(default_factory=DecoupledPPO, description="Objective.")
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer.")
    temperature: float = Field(
        1.0, gt=0, description="Sampling temperature of the generator (for log-probs)."
    )
    micro_batch_tokens: int = Field(
        4096, ge=64, description="Token budget of one packed micro-batch."
    )
    share_prompts: bool = Field(
        True,
        description="Put a group's prompt into the forward pass once, shared by its responses "
        "(same result, fewer token positions); false packs every sequence whole.",
    )
    bf16: bool = Field(True, description="bf16 autocast (CPU and GPU).")
    checkpoint_every: int = Field(10, ge=1, description="Checkpoint every N steps (and at stop).")
    samples_every: int = Field(
        10, ge=1, description="Write sample rollouts of the batch every N steps (and step 1)."
    )
    keep_checkpoints: int | None = Field(
        3, ge=1, le=1000, description="Newest checkpoints kept on disk; null keeps all."
    )
    truncated: Literal["train", "mask"] = Field(
        "train",
        description="Responses cut at max_tokens (finish_reason 'length'): 'train' on them, or "
        "'mask' them: they stay in their group's reward baseline but carry no loss (the filter "
        "must 'keep' them for this).",
    )
    resume_from: Path | None = Field(
        None,
        description="Resume from a checkpoint: a step_<N> folder, a checkpoints folder or a run "
        "folder (its latest checkpoint). The runtime's resume state takes precedence.",
    )


class Trainer(Streaming):
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

    def setup(self, ctx: NodeContext) -> None:
        import torch

        from areal_flow.train.session import TrainingSession

        super().setup(ctx)
        cfg: TrainerConfig = self.config  # type: ignore[assignment]
        # Pinned cores, else the launcher's thread budget (Ray does not pin), else all cores.
        budget = len(ctx.cpus) or int(os.environ.get("OMP_NUM_THREADS", "0"))
        torch.set_num_threads(max(1, budget or len(os.sched_getaffinity(0))))
        resume = (ctx.resume_state or {}).get("checkpoint") or cfg.resume_from
        self.session = TrainingSession(
            cfg,
            run_dir=ctx.run_dir,
            device=ctx.device,
            seed=ctx.seed,
            store=_weights_store(cfg.name, ctx.graph),
            weights_dtype=_weights_dtype(cfg.name, ctx.graph),
            resume_from=Path(resume) if resume else None,
        )
        self.steplog = StepLog(ctx.run_dir, samples_every=cfg.samples_every)
        self.failed = False
        self.feeder: asyncio.Task[None] | None = None
        if self.session.step:
            ctx.log.info("resumed at step %d, version %d", self.session.step, self.session.version)

    async def run(self, inputs: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[Output]:
        published: asyncio.Queue[Future[Published] | None] = asyncio.Queue(self.NOTICES_AHEAD)
        work = asyncio.create_task(self._work(inputs, published), name="trainer-work")
        try:
            while (future := await published.get()) is not None:
                done = await asyncio.wrap_future(future)  # a failed write raises here
                self.ctx.metrics.gauge("publish_ready_s", done.ready_s)  # type: ignore[union-attr]
                yield done.ref.batch()
            await work  # a training error raises here
        except Exception:
            self.failed = True  # no checkpoint of a state an error may have left half-updated
            raise
        finally:
            work.cancel()
            if self.feeder is not None:
                self.feeder.cancel()

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
        cfg: TrainerConfig = self.config  # type: ignore[assignment]
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
                batch_metrics = await self._compute(session.prepare, groups)
                batch_metrics["wait_s"] = wait_s
                self._gauges(batch_metrics)
                self.steplog.maybe_write_samples(session.step + 1, pa.Table.from_batches(groups))
            future, step_metrics = await self._compute(session.train_next)
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
        need = self.config.batch_groups  # type: ignore[attr-defined]
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
        if self.feeder is not None:
            self.feeder.cancel()
        if session is None:
            return
        try:
            if not self.failed and session.dirty:
                await self._compute(session.checkpoint, session.snapshot())
        finally:
            await self._compute(session.close)


def _weights_dtype(name: str, graph: Graph | None) -> str | None:
    """'bfloat16' when every generator fed by this trainer's publishers loads the model in
    bfloat16 (their load would round to it anyway, so publishing bf16 is exact and half the
    bytes); None (the trainer's own fp32) otherwise."""
    if graph is None:
        return None
    publishers = {e.split("dst")[0] for e in graph.edges if e.split("src")[0] == name}
    fed = {e.split("dst")[0] for e in graph.edges if e.split("src")[0] in publishers}
    generators = [n for n in graph.nodes if n.name in fed and n.kind == "generator"]
    dtypes = {getattr(n, "dtype", None) for n in generators}
    return "bfloat16" if dtypes == {"bfloat16"} else None


def _weights_store(name: str, graph: Graph | None) -> Store:
    """The store of the weight publisher this trainer feeds ('shm' without one)."""
    if graph is None:
        return "shm"
    for edge in graph.edges:
        if edge.split("src")[0] == name:
            node = graph.node(edge.split("dst")[0])
            store = getattr(node, "store", None)
            if node.kind == "weight_publisher" and store in ("shm", "run_dir"):
                return store
    return "shm"
