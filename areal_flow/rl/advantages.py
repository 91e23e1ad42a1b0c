"""Group-relative advantages: one scalar per trajectory from its reward and its group's rewards.

Rules:
- Estimators (DESIGN.md §7), for a group g of n rewards with mean m_g and std s_g:
  ``grpo``   (r − m_g) / (s_g + ε);
  ``drgrpo`` r − m_g (Dr.GRPO: no std division, which biases towards easy/hard prompts);
  ``rloo``   r_i − mean of the other n − 1 rewards = n / (n − 1) · (r_i − m_g).
- **Population std** (divide by n, ``unbiased=False``): it is defined for every group size,
  makes each normalised group have unit variance, and matches the batch whitening below. (The
  sample std would scale GRPO advantages by √((n−1)/n), e.g. ×0.87 for n = 4.)
- A group whose rewards are all equal gets advantage **exactly** 0 under every estimator (and
  with ``batch_norm``): its rewards are compared, not subtracted, since a float32 group mean
  leaves ~1e-8 of rounding that GRPO's ε-guarded division would blow up to ~0.1.
- RLOO needs a group of at least 2 (no leave-one-out baseline otherwise): a size-1 group raises.
- ``batch_norm`` then scales the whole batch to unit spread: A / (std(A) + ε), population std.
  It does not re-centre: group-relative advantages already have mean 0 per group, and
  subtracting the batch mean would only move uniform groups off 0.
- Group ids may be any hashable values (the ``group_id`` strings of the schema) or an int tensor.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Literal

import torch

Estimator = Literal["grpo", "drgrpo", "rloo"]
ESTIMATORS: tuple[Estimator, ...] = ("grpo", "drgrpo", "rloo")


def group_index(group_ids: Sequence[Hashable] | torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group numbers 0..G−1 (in order of first appearance) and G."""
    keys = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    numbers: dict[Hashable, int] = {}
    index = [numbers.setdefault(key, len(numbers)) for key in keys]
    return torch.tensor(index, dtype=torch.long), len(numbers)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable] | torch.Tensor,
    *,
    estimator: Estimator = "grpo",
    batch_norm: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-trajectory advantages (float32, shape [N]) for rewards [N] and their group ids [N]."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {ESTIMATORS}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    index, n_groups = group_index(group_ids)
    if index.numel() != rewards.numel():
        raise ValueError(f"{rewards.numel()} rewards but {index.numel()} group ids")
    r = rewards.detach().to(torch.float32)
    index = index.to(r.device)
    size = torch.zeros(n_groups, device=r.device).index_add_(0, index, torch.ones_like(r))
    mean = torch.zeros(n_groups, device=r.device).index_add_(0, index, r) / size
    high = torch.full((n_groups,), -math.inf, device=r.device).scatter_reduce(0, index, r, "amax")
    low = torch.full((n_groups,), math.inf, device=r.device).scatter_reduce(0, index, r, "amin")
    uniform = (high == low)[index]
    centred = torch.where(uniform, torch.zeros_like(r), r - mean[index])
    if estimator == "grpo":
        var = torch.zeros(n_groups, device=r.device).index_add_(0, index, centred**2) / size
        adv = centred / (var.sqrt()[index] + eps)
    elif estimator == "drgrpo":
        adv = centred
    else:
        n = size[index]
        if bool((n < 2).any()):
            raise ValueError("RLOO needs groups of at least 2 trajectories; got a group of 1")
        adv = centred * n / (n - 1)
    if batch_norm:
        adv = batch_scale(adv, eps=eps)
    return adv


def batch_scale(values: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """x / (population std + ε) over all elements; zeros stay exactly zero."""
    spread = (values - values.mean()).pow(2).mean().sqrt()
    return values / (spread + eps)
