"""The settings of the built-in trainer (``areal_flow.nodes.trainer``) that its library code —
``policy``, ``session``, ``checkpoint`` — reads. Pure Pydantic (no torch).

Rules: the library depends on this module, never on the node module; the node adds only its
``kind``. Fields the runtime relies on (model, batch size, steps, objective, temperature) are
the trainer role's (``areal_flow.roles.TrainerSpec``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from areal_flow.roles import TrainerSpec
from areal_flow.spec import CheckpointRef
from areal_flow.train.algo import Optimizer
from areal_flow.train.lora import LoraConfig


class TrainingConfig(TrainerSpec):
    """A decoupled-PPO trainer: optimizer, packing, precision, checkpoints."""

    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer.")
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
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters (peft) instead of the full weights: the base stays "
        "frozen, versions publish only the adapter, checkpoints hold the adapter.",
    )
    resume_from: CheckpointRef | None = Field(
        None,
        description="Resume from a checkpoint: a step_<N> folder, a checkpoints folder or a run "
        "folder (its latest checkpoint). The runtime's resume state takes precedence.",
    )
