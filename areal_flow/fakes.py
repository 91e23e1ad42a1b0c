"""Light stand-ins for the RL roles, with no model: for benchmarks of the control plane at scale.

They are ordinary node kinds (subclasses of the role specs, run by the same driver, gate,
ledger and ZeroMQ links as the real nodes); a graph of them shows what the runtime costs
without the cost of a model.

Rules:
- ``fake_prompts`` emits prompt records (one group per batch, ``group_size`` samples, fake
  token ids); ``groups`` of them, or endless.
- ``fake_generator`` holds up to ``max_groups`` prompt groups at once. Each sample's length is
  drawn from a long-tailed law (log-normal around ``median_tokens``, capped at ``max_tokens``:
  reasoning RL's response lengths, AReaL §2), and takes ``length · token_s`` seconds of sleep;
  a group is emitted when its slowest sample ends. Every token carries the policy version the
  replica had loaded when the token was "sampled" (weight notices land mid-sequence, as with
  interruptible generation), so the gate's lag accounting sees what a real generator produces.
- ``fake_trainer`` takes rollout records (no reward needed), sleeps ``step_s`` per step of
  ``batch_groups`` groups, then publishes a real (tiny) safetensors version through the weight
  store, so the real publisher verifies and relays it. The run ends after ``steps`` steps. Sent
  to a sink instead of the generators, its versions still move the gate while real generators
  keep their own weights (a rollout-rate benchmark).
- Lengths and timings come from a generator seeded by the run seed and the replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from areal_flow.node import NodeContext, Output, Source, Streaming
from areal_flow.roles import GeneratorSpec, SourceSpec, TrainerSpec
from areal_flow.schema import METRICS_TYPE, SCHEMAS
from areal_flow.spec import Port, Resources, light_resources


class FakePromptsConfig(SourceSpec):
    """Prompt groups with fake token ids: a source that costs nothing."""

    outputs: ClassVar[dict[str, Port]] = {"prompts": Port(record="prompt")}
    kind: Literal["fake_prompts"] = "fake_prompts"
    groups: int | None = Field(None, ge=1, description="Groups to emit; null = endless.")
    group_size: int = Field(8, ge=1, le=1024, description="Samples per prompt group.")
    prompt_tokens: int = Field(64, ge=1, description="Token ids per prompt.")


class FakePrompts(Source[FakePromptsConfig]):
    def setup(self, ctx: NodeContext) -> None:
        super().setup(ctx)
        self.emitted = 0
        self.tokens = list(range(self.config.prompt_tokens))

    def next_batch(self) -> Output:
        assert self.ctx is not None
        cfg = self.config
        index = self.emitted * self.ctx.replicas + self.ctx.replica
        self.emitted += 1
        row = {
            "prompt_id": f"p{index}",
            "group_id": f"0:{index}",
            "group_size": cfg.group_size,
            "epoch": 0,
            "level": "fake",
            "prompt": "",
            "prompt_token_ids": self.tokens,
            "answer": "",
        }
        return pa.RecordBatch.from_pylist([row], schema=SCHEMAS["prompt"])

    @property
    def exhausted(self) -> bool:
        groups, ctx = self.config.groups, self.ctx
        if groups is None or ctx is None:
            return False
        return self.emitted * ctx.replicas + ctx.replica >= groups

    def state(self) -> dict[str, Any] | None:
        return {"emitted": self.emitted}


class FakeGeneratorConfig(GeneratorSpec):
    """Timed sleeps with long-tailed lengths instead of a model."""

    inputs: ClassVar[dict[str, Port]] = {
        "prompts": Port(record="prompt"),
        "weights": Port(record="weights", required=False, weights=True),
    }
    outputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}
    kind: Literal["fake_generator"] = "fake_generator"
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")
    max_groups: int = Field(4, ge=1, le=4096, description="Prompt groups in flight at once.")
    median_tokens: int = Field(500, ge=1, description="Median response length (tokens).")
    sigma: float = Field(0.8, ge=0, le=3, description="Log-normal spread of the lengths.")
    max_tokens: int = Field(4096, ge=1, description="Lengths are capped here (truncation).")
    token_s: float = Field(0.001, ge=0, description="Seconds per token of one sequence.")


class FakeGenerator(Streaming[FakeGeneratorConfig]):
    def setup(self, ctx: NodeContext) -> None:
        super().setup(ctx)
        self.rng = np.random.default_rng([ctx.seed, ctx.replica])
        self.slots = asyncio.Semaphore(self.config.max_groups)
        self.load_times = [time.monotonic()]  # when each version in ``loaded`` became active
        self.loaded = [ctx.version]
        self.tokens = 0
        self.started_at = time.monotonic()

    def on_weights(self, version: int, ref: dict[str, Any]) -> None:
        assert self.ctx is not None
        if version <= self.loaded[-1]:
            return
        self.load_times.append(time.monotonic())
        self.loaded.append(version)
        self.ctx.metrics.gauge("publish_to_active_s", time.time() - float(ref["created_at"]))
        self.ctx.metrics.gauge("policy_version", version)

    async def run(self, inputs: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[Output]:
        done: asyncio.Queue[pa.RecordBatch | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def feed() -> None:
            # A slot first, then a prompt: a busy replica leaves prompts in its queue, which
            # withholds credit, so the source sends them to replicas with room.
            pending: list[pa.RecordBatch] = []
            batches = aiter(inputs)
            while True:
                await self.slots.acquire()
                while not pending:
                    batch = await anext(batches, None)
                    if batch is None:
                        break
                    pending = [batch.slice(i, 1) for i in range(batch.num_rows)]
                if not pending:
                    self.slots.release()
                    break
                task = asyncio.create_task(self._group(pending.pop(0), done))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*list(running))
            await done.put(None)

        feeder = asyncio.create_task(feed())
        try:
            while (batch := await done.get()) is not None:
                yield batch
            await feeder
        finally:
            feeder.cancel()
            for task in list(running):
                task.cancel()

    async def _group(self, prompt: pa.RecordBatch, done: asyncio.Queue[Any]) -> None:
        try:
            cfg = self.config
            n = int(prompt.column("group_size")[0].as_py())
            drawn = self.rng.lognormal(np.log(cfg.median_tokens), cfg.sigma, n)
            lengths = np.clip(drawn.astype(np.int64), 1, cfg.max_tokens)
            began = time.monotonic()
            await asyncio.sleep(float(lengths.max()) * cfg.token_s)
            await done.put(self._rollouts(prompt, lengths, began))
        finally:
            self.slots.release()

    def _rollouts(self, prompt: pa.RecordBatch, lengths: np.ndarray, began: float) -> Any:
        """One rollout row per sample; token i of a sample carries the version loaded at
        ``began + (i + 1) · token_s``."""
        assert self.ctx is not None
        cfg = self.config
        n = len(lengths)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
        token_times = began + cfg.token_s * np.concatenate([np.arange(1, k + 1) for k in lengths])
        at = np.searchsorted(np.asarray(self.load_times), token_times, side="right") - 1
        versions = np.asarray(self.loaded, np.int32)[np.maximum(at, 0)]
        total = int(lengths.sum())
        repeated = {name: pa.repeat(prompt.column(name)[0], n) for name in prompt.schema.names}
        columns = {
            **repeated,
            "sample_index": pa.array(np.arange(n), pa.int32()),
            "response": pa.array([""] * n, pa.string()),
            "response_token_ids": pa.ListArray.from_arrays(
                offsets, pa.array(np.zeros(total, np.int32))
            ),
            "logprobs": pa.ListArray.from_arrays(offsets, pa.array(np.zeros(total, np.float32))),
            "versions": pa.ListArray.from_arrays(offsets, pa.array(versions)),
            "finish_reason": pa.array(
                ["length" if k >= cfg.max_tokens else "stop" for k in lengths], pa.string()
            ),
            "loss_mask": pa.ListArray.from_arrays(offsets, pa.array(np.ones(total, np.int8))),
            "episode_metrics": pa.array([[]] * n, METRICS_TYPE),
        }
        schema = SCHEMAS["rollout"]
        arrays = [columns[f.name].cast(f.type) for f in schema]
        self.tokens += total
        self.ctx.metrics.count("samples", n)
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        self.ctx.metrics.gauge("gen_tokens_per_s", self.tokens / elapsed)
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


class FakeTrainerConfig(TrainerSpec):
    """Counts groups into batches, sleeps ``step_s`` per step and publishes a tiny version."""

    inputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}
    kind: Literal["fake_trainer"] = "fake_trainer"
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")
    step_s: float = Field(0.005, ge=0, description="Seconds one optimizer step takes.")
    store: Literal["shm", "run_dir"] = Field("shm", description="Where versions are written.")


class FakeTrainer(Streaming[FakeTrainerConfig]):
    def setup(self, ctx: NodeContext) -> None:
        import torch

        super().setup(ctx)
        from areal_flow.train.weights import weights_root

        self.root = weights_root(self.config.store, ctx.run_dir)
        self.tensors = {"w": torch.zeros(16)}
        self.version = ctx.version

    async def run(self, inputs: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[Output]:
        from areal_flow.train.weights import publish_weights

        assert self.ctx is not None
        cfg = self.config
        rows: dict[str, int] = {}
        full: list[str] = []
        async for batch in inputs:
            sizes = batch.column("group_size").to_pylist()
            for group, size in zip(batch.column("group_id").to_pylist(), sizes, strict=True):
                rows[group] = rows.get(group, 0) + 1
                if rows[group] == size:
                    full.append(group)
            while len(full) >= cfg.batch_groups:
                for group in full[: cfg.batch_groups]:
                    del rows[group]
                del full[: cfg.batch_groups]
                await asyncio.sleep(cfg.step_s)
                self.version += 1
                self.tensors["w"] += 1.0
                root, version = self.root, self.version
                ref = await asyncio.to_thread(publish_weights, self.tensors, root, version)
                self.ctx.metrics.gauge("steps", self.version)
                yield ref.batch()
                if self.version >= cfg.steps:
                    return

    def teardown(self) -> None:
        """Free shared memory: the run is over, and nothing reads fake weights afterwards (the
        publisher removes only the versions it relayed)."""
        import shutil

        if self.config.store == "shm" and hasattr(self, "root"):
            shutil.rmtree(self.root, ignore_errors=True)
