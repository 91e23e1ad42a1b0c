"""Evaluator: scores the current policy on held-out problems every N policy versions.

Why a node of its own, not the generator's engine between batches: an evaluation on the
generator's engine would be interrupted by new weights mid-answer (answers of mixed versions,
so no clean point per step), and would hold back rollouts the trainer is waiting for. Here the
evaluator has its own engine, loads exactly version v, and the generator never waits; the cost
is a second copy of the model and CPU shared with the run (``evaluation.every_problems`` keeps
it small). ``evaluation.every`` adds this node to the graph (``areal_flow.evaluation``).

Rules:
- Fed by the publisher's weight notices (a weights-only node: the notices are its data). It
  takes every notice at once, so the publisher never waits on it: when an evaluation is still
  running, notices pass by, and the first notice at or past the next due version starts the
  next one. The policy is loaded as soon as its notice arrives (the publisher prunes old
  versions).
- Version 0 (the initial model) is scored first, then versions N, 2N, ... (or the first version
  past each, when an evaluation took longer than N steps).
- Each point is one line of ``<run>/metrics/eval.jsonl``: ``step`` (= policy version),
  ``time``, ``problems``, ``samples``, ``eval_s``, and ``eval/pass1``, ``eval/pass@k``,
  ``eval/format_rate`` overall and ``eval/pass1/<level>`` per level. The run tracker logs them to
  MLflow, the web view draws them.
- Stateless: a restarted evaluator starts again from the newest notice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from areal_flow.data.prompting import PromptFormat
from areal_flow.episodes.runner import EpisodePlan
from areal_flow.node import NodeContext, Output, Streaming
from areal_flow.spec import ModelRef, NodeSpec, Port, Resources, light_resources


class EvaluatorConfig(NodeSpec):
    """Held-out pass@1 / pass@k of the policy every ``every`` versions, during training."""

    inputs: ClassVar[dict[str, Port]] = {"weights": Port(record="weights", weights=True)}
    outputs: ClassVar[dict[str, Port]] = {}
    stateless: ClassVar[bool] = True

    kind: Literal["evaluator"] = "evaluator"
    model: ModelRef = Field(description="The initial policy (the trainer's model).")
    every: int = Field(ge=1, le=1_000_000, description="Score every N policy versions.")
    data: str = Field("arithmetic", description="Held-out data (see evaluation.data).")
    problems: int = Field(32, ge=1, le=100_000, description="Problems per evaluation.")
    samples: int = Field(2, ge=1, le=256, description="Samples per problem.")
    k: int = Field(2, ge=1, le=256, description="k of pass@k.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature.")
    max_tokens: int = Field(96, ge=1, description="Most tokens per answer.")
    engine: Literal["vllm", "hf"] = Field("vllm", description="Inference engine.")
    format: PromptFormat = Field(
        default_factory=PromptFormat, description="Prompt rendering (the prompt source's)."
    )
    episode: EpisodePlan = Field(
        default_factory=EpisodePlan, description="Episode function and limits (the generator's)."
    )
    replicas: int = Field(1, ge=1, le=1, description="One evaluator per run.")
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")


class Evaluator(Streaming[EvaluatorConfig]):
    """See the module rules."""

    async def setup(self, ctx: NodeContext) -> None:
        from transformers import AutoTokenizer

        from areal_flow.evaluate import eval_rows, load_eval_problems
        from areal_flow.models import prepare_model
        from areal_flow.reward import math_pool
        from areal_flow.web.runfiles import eval_path

        super().setup(ctx)
        cfg = self.config
        folder = prepare_model(cfg.model)
        self.items = load_eval_problems(cfg.data, cfg.problems, ctx.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.rows = eval_rows(self.tokenizer, self.items, cfg.format)
        self.engine = await _start_engine(cfg, str(folder), ctx)
        self.pool = math_pool(workers=1).start()
        self.out = eval_path(ctx.run_dir)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.next_due = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self, inputs: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[Output]:
        assert self.ctx is not None
        if self.ctx.version == 0:
            self._start(0)
        else:  # restarted mid-run: the next due version, not the initial model again
            self.next_due = (self.ctx.version // self.config.every + 1) * self.config.every
        async for batch in inputs:
            for row in batch.to_pylist():
                version = int(row["version"])
                if version >= self.next_due and (self.task is None or self.task.done()):
                    if self.task is not None:
                        self.task.result()  # an evaluation that raised fails the node
                    await self.engine.update_weights(version, row["path"])
                    self._start(version)
        if self.task is not None:
            await self.task  # the last due point, when the run lets it finish
        return
        yield  # an async generator that emits nothing

    def _start(self, version: int) -> None:
        self.next_due = (version // self.config.every + 1) * self.config.every
        self.task = asyncio.create_task(self._evaluate(version), name=f"eval-{version}")

    async def _evaluate(self, version: int) -> None:
        from areal_flow.evaluate import ALL, run_episodes, score_outcomes

        assert self.ctx is not None
        cfg = self.config
        began = time.monotonic()
        outcomes = await run_episodes(
            self.engine,
            self.tokenizer,
            self.rows,
            cfg.samples,
            cfg.temperature,
            cfg.max_tokens,
            cfg.episode,
        )
        result = await score_outcomes(
            self.pool, cfg.model, cfg.data, self.items, outcomes, cfg.samples, cfg.k
        )
        record: dict[str, Any] = {
            "step": version,
            "version": version,
            "time": time.time(),
            "problems": result.problems[ALL],
            "samples": cfg.samples,
            "eval_s": time.monotonic() - began,
            "eval/pass1": result.pass1[ALL],
            f"eval/pass@{cfg.k}": result.pass_k[ALL],
            "eval/format_rate": result.format_rate[ALL],
            **{f"eval/pass1/{lv}": v for lv, v in result.pass1.items() if lv != ALL},
            **{f"eval/episode/{name}": v for name, v in result.episode_metrics.items()},
        }
        with self.out.open("a") as out:
            out.write(json.dumps(record) + "\n")
        metrics = self.ctx.metrics
        metrics.count("evaluations")
        metrics.gauge("eval_pass1", result.pass1[ALL])
        metrics.gauge("eval_version", version)
        self.ctx.log.info(
            "version %d: pass@1 %.3f on %d problems (%.1f s)",
            version,
            result.pass1[ALL],
            result.problems[ALL],
            record["eval_s"],
        )

    async def teardown(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.pool.close()
        await self.engine.close()


async def _start_engine(cfg: EvaluatorConfig, model: str, ctx: NodeContext) -> Any:
    from areal_flow.engine import create_engine

    settings: dict[str, Any] = {
        "model": model,
        "seed": ctx.seed * 1000 + 999,
        "max_model_len": cfg.episode.max_model_len,
    }
    if cfg.engine == "vllm":
        settings.update(max_num_seqs=64)
    else:
        settings.update(max_batch=64)
    engine = create_engine(cfg.engine, **settings)
    await engine.start()
    return engine
