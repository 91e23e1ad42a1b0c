"""The training objective's and optimizer's settings (pure Pydantic: no torch).

Rules:
- ``DecoupledPPO`` is AReaL's eq. 5 with its advantage estimator; ``Optimizer`` is AdamW with
  warm-up and a schedule. Both are frozen specs nested in a trainer's config.
- The clip range acts through u = π_θ / π_prox. With one update per batch (K = 1) π_prox *is*
  π_θ at the update (u = 1 exactly), so ``eps_low``/``eps_high`` have no effect: only K > 1
  moves π_θ away from π_prox within a batch. The behaviour correction w = π_prox / π_behav
  (``iw_cap``) acts at any K.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from areal_flow.spec import Spec


class DecoupledPPO(Spec):
    """The decoupled PPO objective (AReaL eq. 5) and its advantage estimator."""

    advantage: Literal["grpo", "drgrpo", "rloo"] = Field(
        "grpo", description="Group-relative advantage: GRPO, Dr.GRPO (no std) or RLOO."
    )
    batch_norm: bool = Field(False, description="Also whiten advantages across the batch.")
    eps_low: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Lower clip: ratio π_θ/π_prox ≥ 1 − eps_low. No effect with "
        "updates_per_batch = 1 (the ratio is then exactly 1).",
    )
    eps_high: float = Field(
        0.28,
        gt=0,
        le=10,
        description="Upper clip: ratio π_θ/π_prox ≤ 1 + eps_high. No effect with "
        "updates_per_batch = 1 (the ratio is then exactly 1).",
    )
    iw_cap: float | None = Field(5.0, gt=1, description="Cap on π_prox/π_behav; null = uncapped.")
    iw_cap_mode: Literal["clamp", "mask"] = Field(
        "mask", description="'clamp' the weight at the cap, or 'mask' tokens above it."
    )
    aggregation: Literal["token", "sequence"] = Field(
        "token", description="Mean over all tokens, or over tokens then sequences."
    )
    updates_per_batch: int = Field(
        1,
        ge=1,
        le=64,
        description="K minibatch updates (optimizer steps, policy versions) per batch; at most "
        "batch_groups. The staleness bound then allows a lag of η + K − 1 for a batch's later "
        "minibatches.",
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
    max_bad_steps: int = Field(
        3,
        ge=1,
        le=1000,
        description="A step whose gradient is not finite (NaN/inf) is skipped and counted "
        "(skipped_steps); this many in a row stop the run.",
    )
