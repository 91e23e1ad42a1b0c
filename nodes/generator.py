"""Generator: streams rollouts from an inference engine; new weights interrupt generation.

Rules:
- Never waits for the trainer; emits one batch per finished prompt group (all n trajectories).
- Each trajectory is one *episode*: the configured episode function (default: one sampled
  answer, ``single_turn``) run on the row, its turns on this replica's engine. Up to
  ``max_running`` episodes run at once; a weight update interrupts their turns as
  ``interrupt_mode`` says (``engine.vllm_engine``: ``inflight``, the default, ``recompute``,
  ``abort``, or ``drain``: running turns finish first), or, with ``staleness.interrupt`` off,
  waits until no episode is running (so a multi-turn episode sees one version, whatever the
  mode). Every sampled token carries the policy version that sampled it; inserted tokens carry
  ``loss_mask`` 0.
- Episode functions are user code: they run under a time limit, failures are counted by reason
  (``episode_failed/<reason>``) and give an empty trajectory; ``max_failed_episodes`` failures
  in a row stop the node with the last one's traceback.
- Stateless: what it holds (the engine, groups in flight) is rebuilt or given back when a
  replica dies — the runtime restarts it with the newest weights and its source issues the
  lost groups again. A group id may arrive twice (a re-issue racing a copy that survived): each
  copy runs its own episodes.
- Lending placement (``areal_flow.lending``): the replica's idle flag says idle exactly while
  no episode runs and no weights load, so the trainer borrows its cores only then.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from areal_flow.engine.vllm_engine import (
    DEFAULT_PRELOAD,
    InterruptMode,
    PreloadLibrary,
    check_interrupt_mode,
)
from areal_flow.lending import IdleFlag
from areal_flow.node import NodeContext, Output, Streaming
from areal_flow.precision import EngineDtype, resolve_dtype
from areal_flow.roles import GeneratorSpec, Sampling, TrainerSpec
from areal_flow.schema import SCHEMAS, with_extra_columns
from areal_flow.spec import Port

FAILURE_LOG_LIMIT = 5  # episode failures logged in full per replica; the rest are counted


class GeneratorConfig(GeneratorSpec):
    """LLM rollouts on vLLM (default) or plain transformers (``hf``)."""

    inputs: ClassVar[dict[str, Port]] = {
        "prompts": Port(record="prompt"),
        "weights": Port(record="weights", required=False, weights=True),
    }
    outputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}

    kind: Literal["generator"] = "generator"
    engine: Literal["vllm", "hf"] = Field(
        "vllm", description="'vllm' (CPU or CUDA) or 'hf' (plain transformers fallback)."
    )
    max_failed_episodes: int = Field(
        32, ge=1, description="Failed episodes in a row that stop the node (a broken function)."
    )
    max_running: int = Field(
        64, ge=1, le=4096, description="Most episodes running at once in this replica."
    )
    interrupt_mode: InterruptMode = Field(
        "inflight",
        description="vLLM: what new weights do to running sequences. 'inflight' (default): "
        "continue on the new weights over the old KV (no recompute); 'recompute': pause, drop "
        "the KV cache, recompute each prefix on the new weights; 'abort': abort and resubmit "
        "each prefix; 'drain': finish them on the old weights first. staleness.interrupt off "
        "waits for whole episodes instead, whatever the mode.",
    )
    dtype: EngineDtype = Field(
        "float32",
        description="Engine weight and compute dtype: 'float32', 'bfloat16', or 'auto': bfloat16 "
        "where the device computes it natively (CUDA; CPUs with AVX-512 BF16 or AMX), float32 "
        "elsewhere, where bf16 is emulated and decodes many times slower (areal_flow.precision).",
    )
    kv_cache_gib: int = Field(1, ge=1, le=1024, description="KV cache size in GiB (vLLM CPU).")
    preload: tuple[PreloadLibrary, ...] = Field(
        DEFAULT_PRELOAD,
        description="vLLM CPU: libraries preloaded into the engine's processes where installed "
        "('tcmalloc': Debian libtcmalloc-minimal4, 'iomp': PyPI intel-openmp); () for none.",
    )
    gpu_memory: float = Field(
        0.5,
        gt=0,
        le=0.95,
        description="vLLM on CUDA: the share of the GPU's memory the engine takes (weights and "
        "KV cache); leave room for a trainer on the same GPU.",
    )
    step_tokens: int | None = Field(
        None,
        ge=16,
        description="vLLM: most tokens one engine step computes (running sequences' next tokens "
        "plus a chunk of new prompts; vLLM's max_num_batched_tokens, default 2048 on CPU). A "
        "weight update waits for the step in progress, so this bounds its pause "
        "(bench/step_tokens.py).",
    )
    kv_block_tokens: int | None = Field(
        None,
        ge=16,
        multiple_of=16,
        description="vLLM: tokens per KV-cache block, the unit in which a group's samples share "
        "their prompt's KV (prefix caching shares whole blocks only). None: 32 on CPU (a "
        "multiple of 32 there), vLLM's default on CUDA.",
    )
    eager: bool = Field(
        False,
        description="vLLM: run without torch.compile (vLLM's enforce_eager): no compilation "
        "at start-up, slower decoding; see bench/startup.py for when compiling pays off.",
    )
    lora: Literal["merge", "vllm"] = Field(
        "merge",
        description="How a LoRA trainer's adapter versions are served: 'merge' them into the "
        "weights (any engine), or 'vllm': vLLM's LoRA, up to the trainer's rank (on "
        "vLLM-CPU it decodes ~3x slower: no torch.compile; bench/lora_decode.py).",
    )

    @field_validator("interrupt_mode", mode="before")
    @classmethod
    def _renamed_mode(cls, value: object) -> object:
        return check_interrupt_mode(value)

    @model_validator(mode="after")
    def _vllm_lora_needs_vllm(self) -> GeneratorConfig:
        if self.lora == "vllm" and self.engine != "vllm":
            raise ValueError(
                "lora 'vllm' serves adapters with vLLM's LoRA; set engine to 'vllm', or lora "
                "to 'merge'"
            )
        return self

    def eval_engine(self) -> str | None:
        return self.engine

    def engine_settings(self) -> dict[str, Any]:
        if self.engine == "hf":
            return {"dtype": self.weights_dtype(), "max_model_len": self.max_model_len,
                    "max_batch": self.max_running}  # fmt: skip
        return {
            "dtype": self.weights_dtype(),
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_running,
            "kv_cache_gib": self.kv_cache_gib,
            "preload": self.preload,
            "gpu_memory_utilization": self.gpu_memory,
            "enforce_eager": self.eager,
            "block_size": self.kv_block_tokens,
        }

    def weights_dtype(self) -> str:
        """The engine's dtype, 'auto' resolved on this machine for the device the engine uses
        (vLLM takes the replica's GPU; the hf engine always runs on CPU)."""
        on_gpu = self.engine == "vllm" and self.resources.gpus > 0
        return resolve_dtype(self.dtype, "cuda" if on_gpu else "cpu")


class Generator(Streaming[GeneratorConfig]):
    """Keeps up to ``max_running`` episodes running; emits each prompt group when all its
    episodes have finished. Weight notices interrupt decoding (or, with
    ``staleness.interrupt`` off, wait until no episode is running)."""

    async def setup(self, ctx: NodeContext) -> None:
        from areal_flow.episodes import EngineClient, EpisodePlan

        super().setup(ctx)
        cfg = self.config
        # Lending placement: busy until set up, then idle exactly while nothing runs here.
        self.idle_flag = IdleFlag(Path(ctx.idle_flag)) if ctx.idle_flag else None
        self.updating = False
        self.busy = BusyClock()
        self.engine = await start_engine(cfg, ctx)
        self.interrupt = ctx.graph.staleness.interrupt if ctx.graph is not None else True
        # Admission: the feeder takes a group's slots before reading on, so the input edge's
        # credit (backpressure) sees a full generator. Concurrency: episodes running at once.
        self.slots = asyncio.Semaphore(cfg.max_running)
        self.episode_slots = asyncio.Semaphore(cfg.max_running)
        self.quiet = asyncio.Condition()  # notified whenever an episode finishes
        self.running = 0  # episodes started and not finished
        self.client = EngineClient(self.engine)
        tokenizer = await asyncio.to_thread(load_tokenizer, cfg.model)
        plan = EpisodePlan.of(cfg)
        self.runner = plan.runner(self.client, sampling_config(cfg.sampling), tokenizer)
        self.failed_in_a_row = 0
        self.failures_logged = 0
        self.started_at = time.monotonic()
        self._say_idle()

    def _say_idle(self) -> None:
        idle = self.running == 0 and not self.updating
        self.busy.mark(busy=not idle)
        if self.idle_flag is not None:
            self.idle_flag.set(idle)

    async def on_weights(self, version: int, ref: dict[str, Any]) -> None:
        assert self.ctx is not None
        if version <= self.engine.version:
            return
        began = time.monotonic()
        self.updating = True
        self._say_idle()
        try:
            if self.interrupt:
                await self.engine.update_weights(version, ref["path"])
            else:
                async with self.client.submit_lock, self.quiet:
                    await self.quiet.wait_for(lambda: self.running == 0)
                    await self.engine.update_weights(version, ref["path"])
        finally:
            self.updating = False
            self._say_idle()
        metrics = self.ctx.metrics
        metrics.count("weight_updates")
        metrics.gauge("update_s", time.monotonic() - began)
        # From the file being ready (the notice's created_at) to generating with it.
        active_s = time.time() - float(ref.get("created_at", time.time()))
        metrics.gauge("publish_to_active_s", active_s)
        slowest = max(active_s, metrics.gauges.get("publish_to_active_max_s", 0.0))
        metrics.gauge("publish_to_active_max_s", slowest)
        metrics.gauge("policy_version", version)

    async def run(self, inputs: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[Output]:
        done: asyncio.Queue[pa.RecordBatch | BaseException | None] = asyncio.Queue()
        feeder = asyncio.create_task(self._feed(inputs, done))
        reader = asyncio.create_task(self.client.serve())
        groups: set[asyncio.Task[None]] = set()
        self.groups = groups
        try:
            while True:
                item = await done.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            await feeder
        finally:
            for task in (feeder, reader, *groups):
                task.cancel()

    async def _feed(self, inputs: AsyncIterator[pa.RecordBatch], done: asyncio.Queue[Any]) -> None:
        async for batch in inputs:
            for index, prompt in enumerate(batch.to_pylist()):
                held = min(int(prompt["group_size"]), self.config.max_running)
                for _ in range(held):
                    await self.slots.acquire()
                task = asyncio.create_task(self._group(prompt, batch.slice(index, 1), done))
                self.groups.add(task)
                task.add_done_callback(self.groups.discard)
                task.add_done_callback(functools.partial(self._release, held))
        while self.groups:
            await asyncio.gather(*self.groups, return_exceptions=True)
        await done.put(None)

    def _release(self, slots: int, _: object = None) -> None:
        for _ in range(slots):
            self.slots.release()

    async def _group(
        self, prompt: dict[str, Any], row: pa.RecordBatch, done: asyncio.Queue[Any]
    ) -> None:
        try:
            n = int(prompt["group_size"])
            outcomes = await asyncio.gather(*(self._episode(prompt) for _ in range(n)))
            await done.put(rollout_batch(prompt, row, outcomes))
        except Exception as error:  # a bug here must stop the node, not lose the group
            await done.put(error)

    async def _episode(self, prompt: dict[str, Any]) -> Any:
        assert self.ctx is not None
        async with self.episode_slots:
            async with self.quiet:
                self.running += 1
                self._say_idle()
            try:
                outcome = await self.runner.run(prompt)
            finally:
                async with self.quiet:
                    self.running -= 1
                    self._say_idle()
                    self.quiet.notify_all()
        self._count(outcome)
        return outcome

    def _count(self, outcome: Any) -> None:
        assert self.ctx is not None
        metrics = self.ctx.metrics
        episode = outcome.episode
        metrics.count("samples")
        metrics.count("episodes")
        if episode.finish_reason == "length":
            metrics.count("truncated")
        for name, value in episode.metrics.items():
            metrics.count(f"episode_{name}", value)
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        metrics.gauge("gen_tokens_per_s", self.client.generated_tokens / elapsed)
        # The engine's own pace: the staleness gate idles a generator that outruns the trainer,
        # which lowers the rate above but not this one.
        busy_s = max(self.busy.seconds(), 1e-9)
        metrics.gauge("gen_busy_tokens_per_s", self.client.generated_tokens / busy_s)
        metrics.gauge("gen_busy_frac", min(busy_s / elapsed, 1.0))
        if outcome.failure is None:
            self.failed_in_a_row = 0
            return
        metrics.count(f"episode_failed/{outcome.failure}")
        self.failed_in_a_row += 1
        if self.failures_logged < FAILURE_LOG_LIMIT:
            self.failures_logged += 1
            self.ctx.log.warning("episode failed (%s): %s", outcome.failure, outcome.details)
        if self.failed_in_a_row >= self.config.max_failed_episodes:
            raise RuntimeError(
                f"{self.failed_in_a_row} episodes in a row failed (last: {outcome.failure}) in "
                f"episode function {self.config.episode!r}:\n{outcome.details}"
            )

    async def teardown(self) -> None:
        flag = getattr(self, "idle_flag", None)
        if flag is not None:
            flag.set(False)  # no more to lend: a stopping engine still runs
            flag.close()
        if hasattr(self, "engine"):
            await self.engine.close()


class BusyClock:
    """Seconds spent busy: from a mark(busy=True) to the next mark(busy=False)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.since: float | None = None

    def mark(self, busy: bool) -> None:
        now = time.monotonic()
        if busy and self.since is None:
            self.since = now
        elif not busy and self.since is not None:
            self.total += now - self.since
            self.since = None

    def seconds(self) -> float:
        running = time.monotonic() - self.since if self.since is not None else 0.0
        return self.total + running


def rollout_batch(
    prompt: dict[str, Any], row: pa.RecordBatch, outcomes: list[Any]
) -> pa.RecordBatch:
    """One rollout row per episode of a finished group, in episode order, with the prompt's
    extra columns (a dataset's own fields) repeated on every row."""
    rows = []
    for index, outcome in enumerate(outcomes):
        episode = outcome.episode
        rows.append(
            {
                **{name: prompt[name] for name in SCHEMAS["prompt"].names},
                "sample_index": index,
                "response": episode.text,
                "response_token_ids": episode.response_token_ids,
                "logprobs": episode.logprobs,
                "versions": episode.versions,
                "finish_reason": episode.finish_reason,
                "loss_mask": episode.loss_mask,
                "episode_metrics": list(episode.metrics.items()),
            }
        )
    built = pa.RecordBatch.from_pylist(rows, schema=SCHEMAS["rollout"])
    return with_extra_columns(built, row, [0] * len(rows))


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    from areal_flow.models import prepare_model

    return AutoTokenizer.from_pretrained(prepare_model(model))


def sampling_config(sampling: Sampling) -> Any:
    from areal_flow.engine.base import SamplingConfig

    return SamplingConfig(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_tokens=sampling.max_tokens,
        stop=tuple(sampling.stop),
    )


def lora_rank(graph: Any) -> int | None:
    """The LoRA rank of the graph's trainer (None without one or without lora)."""
    for node in graph.nodes if graph is not None else ():
        lora = getattr(node, "lora", None) if isinstance(node, TrainerSpec) else None
        if lora is not None:
            return int(lora.rank)
    return None


async def start_engine(cfg: GeneratorConfig, ctx: NodeContext) -> Any:
    """The configured engine on the prepared model, on this replica's cores, started."""
    from areal_flow.engine import create_engine
    from areal_flow.models import prepare_model

    model = str(prepare_model(cfg.model))
    cpus = tuple(ctx.cpus) or None
    seed = ctx.seed * 1000 + ctx.replica
    settings: dict[str, Any] = {
        "model": model,
        "seed": seed,
        "cpus": cpus,
        "initial_version": ctx.version,
        **cfg.engine_settings(),
    }
    if cfg.dtype == "auto":
        ctx.log.info("dtype auto: %s on this machine (areal_flow/precision.py)", settings["dtype"])
    if cfg.engine == "vllm":
        settings.update(interrupt_mode=cfg.interrupt_mode, max_batched_tokens=cfg.step_tokens)
        if cfg.lora == "vllm":
            settings.update(max_lora_rank=lora_rank(ctx.graph))
    engine = create_engine(cfg.engine, **settings)
    await engine.start()
    return engine
