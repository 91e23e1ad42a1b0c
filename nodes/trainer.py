"""Trainer: decoupled PPO on batches of scored groups; publishes weights after each step.

Rules: a batch holds whole groups; π_prox is recomputed with the current weights before the
update; version += 1 after every optimizer step; checkpoints make a resumed run lose and repeat
nothing.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from areal_flow.spec import NodeSpec, Port, Spec


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
    bf16: bool = Field(True, description="bf16 autocast (CPU and GPU).")
    checkpoint_every: int = Field(10, ge=1, description="Checkpoint every N steps (and at stop).")
