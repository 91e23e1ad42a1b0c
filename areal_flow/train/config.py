"""The settings of the built-in trainer (``areal_flow.nodes.trainer``) that its library code —
``policy``, ``session``, ``checkpoint`` — reads. Pure Pydantic (no torch).

Rules: the library depends on this module, never on the node module; the node adds only its
``kind``. Fields the runtime relies on (model, batch size, steps, objective, temperature) are
the trainer role's (``areal_flow.roles.TrainerSpec``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 autocast of the decoder (parameters and optimizer stay fp32): true, "
        "false, or 'auto': on where the device computes bf16 natively (CUDA; CPUs with "
        "AVX-512 BF16 or AMX), off elsewhere, where emulated bf16 is many times slower than "
        "fp32 (areal_flow.precision).",
    )
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
    ranks: int = Field(
        1,
        ge=1,
        le=64,
        description="Data-parallel ranks: processes in one torch.distributed group (gloo on "
        "CPU, NCCL on GPU) training one model sharded by FSDP2; each gets a token-balanced "
        "share of every minibatch. resources are the whole group's: each rank gets an equal "
        "share of the cores, and one GPU (resources.gpus = ranks); under Ray each rank is a "
        "placement-group bundle of its own (ranks 1..N−1 Ray actors), so ranks may span "
        "machines.",
    )
    rank_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="How long a rank waits in a collective (or at start-up) for the others "
        "before the trainer fails naming the rank that did not arrive.",
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

    @model_validator(mode="after")
    def _lora_on_one_rank(self) -> TrainingConfig:
        if self.lora is not None and self.ranks > 1:
            raise ValueError(
                f"trainer {self.name!r}: lora with ranks = {self.ranks} is not supported yet "
                "(adapters train on one rank); set ranks = 1 or drop lora"
            )
        return self

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> TrainingConfig:
        gpus = self.resources.gpus
        if self.ranks > 1 and gpus and gpus != self.ranks:
            raise ValueError(
                f"trainer {self.name!r}: ranks = {self.ranks} with resources.gpus = {gpus:g}; "
                f"give each rank one GPU (resources.gpus = {self.ranks}) or none (CPU, gloo)"
            )
        return self
