"""Prompt source: reads a dataset (or the built-in arithmetic task) and emits prompt groups.

Rules: admits a group only when downstream credit and the staleness gate allow; each prompt is
emitted once per epoch as a group of ``group_size`` samples; its position is exactly resumable.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from areal_flow.spec import NodeSpec, Port, Resources, Spec, light_resources


class FieldMap(Spec):
    """Which columns of a dataset file hold the question and the reference answer."""

    question: str = Field("question", min_length=1, description="Column with the problem text.")
    answer: str = Field(
        "answer",
        min_length=1,
        description="Column with the reference answer; GSM8K's '#### N' lines are understood.",
    )


class PromptSourceConfig(NodeSpec):
    """Emits prompt groups from a dataset file or the built-in ``arithmetic`` task."""

    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, Port]] = {"prompts": Port(record="prompt")}
    role: ClassVar[str] = "source"

    kind: Literal["prompt_source"] = "prompt_source"
    dataset: str = Field(
        "arithmetic",
        min_length=1,
        description="'arithmetic' (built-in procedural task, no files) or a path to a .jsonl / "
        ".parquet file or a Hugging Face datasets folder written by save_to_disk.",
    )
    fields: FieldMap = Field(default_factory=FieldMap, description="Column mapping for files.")
    levels: list[str] | None = Field(
        None, description="Arithmetic task levels to draw from; null = all levels."
    )
    split: Literal["train", "test"] = Field(
        "train", description="Arithmetic split; the test split never overlaps training."
    )
    model: str = Field(
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
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")
