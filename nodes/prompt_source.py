"""Prompt source: reads a dataset (or the built-in arithmetic task) and emits prompt groups.

Rules: admits a group only when downstream credit and the staleness gate allow; each prompt is
emitted once per epoch as a group of ``group_size`` samples; its position is exactly resumable.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from areal_flow.data.prompting import PromptFormat, render_prompt
from areal_flow.node import NodeContext, Output, Source
from areal_flow.roles import SourceSpec
from areal_flow.schema import SCHEMAS
from areal_flow.spec import DatasetRef, ModelRef, Port, Spec


class FieldMap(Spec):
    """Which columns of a dataset file hold the question, the reference answer and the rest."""

    question: str = Field("question", min_length=1, description="Column with the problem text.")
    answer: str = Field(
        "answer",
        min_length=1,
        description="Column with the reference answer; GSM8K's '#### N' lines are understood.",
    )
    id: str | None = Field(None, description="Column with a stable id; null = the row number.")
    level: str | None = Field(
        None, description="Column with a level/subset name for per-level metrics; null = none."
    )
    extra: list[str] = Field(
        default_factory=list,
        description="Other columns carried with each prompt (as extra record columns): they "
        "reach the reward function as keyword arguments.",
    )


class PromptSourceConfig(SourceSpec):
    """Emits prompt groups from a dataset file or the built-in ``arithmetic`` task."""

    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, Port]] = {"prompts": Port(record="prompt")}

    kind: Literal["prompt_source"] = "prompt_source"
    dataset: DatasetRef = Field(
        "arithmetic",
        min_length=1,
        description="'arithmetic' (built-in procedural task, no files) or a path to a .jsonl / "
        ".parquet file or a Hugging Face datasets folder written by save_to_disk.",
    )
    fields: FieldMap = Field(default_factory=FieldMap, description="Column mapping for files.")
    format: PromptFormat = Field(default_factory=PromptFormat, description="Prompt rendering.")
    levels: list[str] | None = Field(
        None, description="Arithmetic task levels to draw from; null = all levels."
    )
    split: Literal["train", "test"] = Field(
        "train",
        description="Arithmetic split (the test split never overlaps training); for a "
        "save_to_disk DatasetDict folder, the split to read.",
    )
    size: int = Field(
        20_000, ge=1, le=10_000_000, description="Arithmetic items per epoch (files: all rows)."
    )
    model: ModelRef = Field(
        "smollm2",
        min_length=1,
        description="Model whose tokenizer and chat template render prompts (as the generator's).",
    )
    group_size: int = Field(8, ge=1, le=1024, description="Samples generated per prompt (n).")
    shuffle: bool = Field(True, description="Shuffle each epoch with the graph seed.")
    epochs: int | None = Field(
        None, ge=1, description="Passes over the data; null = until the trainer stops the run."
    )
    max_prompt_tokens: int = Field(
        512, ge=8, le=131072, description="Longer prompts are skipped and counted."
    )

    def held_out_data(self) -> str | None:
        if self.dataset != "arithmetic":
            return None
        return "arithmetic:" + ",".join(self.levels) if self.levels else "arithmetic"

    def prompt_format(self) -> PromptFormat | None:
        return self.format


class PromptSource(Source[PromptSourceConfig]):
    """One prompt group per batch, in the sampler's resumable order.

    Replica r of R takes the items whose position in the walk is r modulo R.
    """

    def setup(self, ctx: NodeContext) -> None:
        from transformers import AutoTokenizer

        from areal_flow.data.sampler import EpochSampler, Position
        from areal_flow.models import prepare_model

        super().setup(ctx)
        cfg = self.config
        self.dataset = load_dataset(cfg, ctx.seed)
        report = getattr(self.dataset, "report", None)
        if report is not None:
            ctx.metrics.gauge("rows_malformed", float(sum(report.skipped.values())))
            if report.skipped:
                ctx.log.warning("%s", report.summary())
        self.tokenizer = AutoTokenizer.from_pretrained(prepare_model(cfg.model))
        state = ctx.resume_state or {}
        start = Position.from_dict(state["position"]) if "position" in state else None
        self.sampler = EpochSampler(
            len(self.dataset), seed=ctx.seed, shuffle=cfg.shuffle, epochs=cfg.epochs, start=start
        )
        self.walked = int(state.get("walked", 0))
        self.extra_schema = extra_schema(self.dataset, cfg.fields.extra)

    def next_groups(self) -> int:
        return 1  # one prompt group per batch

    @property
    def exhausted(self) -> bool:
        return bool(self.sampler.exhausted)

    def next_batch(self) -> Output:
        cfg = self.config
        assert self.ctx is not None
        while not self.sampler.exhausted:
            draw = next(self.sampler)
            self.walked += 1
            if (self.walked - 1) % self.ctx.replicas != self.ctx.replica:
                continue
            row = self._row(draw.position.epoch, self.dataset[draw.item])
            if len(row["prompt_token_ids"]) > cfg.max_prompt_tokens:
                self.ctx.metrics.count("prompts_too_long")
                continue
            self.ctx.metrics.count("prompts")
            return pa.RecordBatch.from_pylist([row], schema=self.extra_schema)
        return None

    def _row(self, epoch: int, problem: Any) -> dict[str, Any]:
        cfg = self.config
        text, ids = render_prompt(self.tokenizer, problem.question, cfg.format)
        return {
            **problem.extra,
            "prompt_id": problem.id,
            "group_id": f"{problem.id}@{epoch}",
            "group_size": cfg.group_size,
            "epoch": epoch,
            "level": problem.level,
            "prompt": text,
            "prompt_token_ids": ids,
            "answer": problem.answer,
        }

    def state(self) -> dict[str, Any]:
        return {"position": self.sampler.position.to_dict(), "walked": self.walked}


def load_dataset(cfg: PromptSourceConfig, seed: int) -> Any:
    """The problems a prompt source walks: the arithmetic task or a file's rows."""
    from areal_flow.data.arithmetic import ArithmeticTask
    from areal_flow.data.datasets import FieldMap as DataFieldMap
    from areal_flow.data.datasets import load_problems

    if cfg.dataset == "arithmetic":
        mix = {level: 1.0 for level in cfg.levels} if cfg.levels else None
        return ArithmeticTask(seed=seed, mix=mix).dataset(cfg.split, cfg.size)
    fields = DataFieldMap(
        question=cfg.fields.question,
        answer=cfg.fields.answer,
        id=cfg.fields.id,
        level=cfg.fields.level,
        extra=tuple(cfg.fields.extra),
    )
    return load_problems(cfg.dataset, fields, split=cfg.split)


def extra_schema(dataset: Any, names: list[str]) -> pa.Schema:
    """The prompt schema plus the extra columns, their types inferred from the whole dataset
    (so every batch has one schema); a name that clashes with a prompt field is an error."""
    clash = [n for n in names if SCHEMAS["prompt"].get_field_index(n) >= 0]
    if clash:
        raise ValueError(
            f"fields.extra {clash} clash with prompt record fields; rename them in the dataset"
        )
    if not names:
        return SCHEMAS["prompt"]
    table = pa.Table.from_pylist([{n: p.extra.get(n) for n in names} for p in dataset])
    return pa.schema([*SCHEMAS["prompt"], *table.schema])
