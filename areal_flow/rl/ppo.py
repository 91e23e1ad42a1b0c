"""The decoupled PPO loss (AReaL eq. 5, DESIGN.md §7) and its diagnostics.

Per token, with π_θ the parameters being trained, π_prox the same parameters before this update
(recomputed by the trainer) and π_behav the policy that sampled the token:

    u = π_θ / π_prox,   w = π_prox / π_behav,
    loss = −w · min(u · Â, clip(u, 1 − ε_low, 1 + ε_high) · Â)

Rules:
- Only ``logp`` carries gradient; ``logp_prox``, ``logp_behav`` and ``advantages`` are detached.
- ``w`` is capped (``iw_cap``): ``clamp`` uses min(w, cap); ``mask`` drops tokens with w > cap
  from the numerator (they contribute nothing, not even gradient) but, as in AReaL, they still
  count in the denominator, so a cap never up-weights the remaining tokens.
- Aggregation: ``token`` = sum over loss tokens / number of loss tokens in the batch;
  ``sequence`` = mean over each sequence's loss tokens, then mean over sequences (sequences with
  no loss token are left out). Sequences are the rows of 2-D inputs, or ``segment_ids``
  (packed rows). ``denominator`` overrides the count (tokens or sequences) so that micro-batch
  losses of one batch add up to the batch loss.
- Masked positions never reach ``exp``: padding may hold any value (−inf, NaN) harmlessly.
- An empty mask gives loss 0 (with a graph) and zero metrics.
- With π_prox = π_behav (η = 0, no interruption) w = 1 and this is the standard PPO clip loss.
- KL diagnostic: the k3 estimator of KL(π_behav ‖ π_θ) on the behaviour samples,
  r − 1 − log r with r = π_θ / π_behav (non-negative, unbiased; Schulman 2020).
"""

from __future__ import annotations

from typing import Literal

import torch

CapMode = Literal["clamp", "mask"]
Aggregation = Literal["token", "sequence"]


def decoupled_ppo_loss(
    logp: torch.Tensor,
    logp_prox: torch.Tensor,
    logp_behav: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    iw_cap: float | None = None,
    iw_cap_mode: CapMode = "clamp",
    aggregation: Aggregation = "token",
    segment_ids: torch.Tensor | None = None,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The scalar loss and its metrics.

    ``logp``, ``logp_prox``, ``logp_behav`` and ``mask`` share one shape: [B, T] (rows are
    sequences) or any shape with ``segment_ids`` of that shape numbering the sequences 0..S−1.
    ``advantages`` has that shape too (per token) or is per sequence, [B] or [S].
    """
    _check_inputs(logp, logp_prox, logp_behav, mask, iw_cap, iw_cap_mode, aggregation)
    keep = mask.to(torch.bool)
    seq = _sequence_ids(logp, segment_ids)
    adv = _per_token(advantages.detach().to(logp.dtype), logp, seq)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    log_u = torch.where(keep, logp - logp_prox.detach(), zero)
    log_w = torch.where(keep, logp_prox.detach() - logp_behav.detach(), zero)
    u, w = log_u.exp(), log_w.exp()

    unclipped = u * adv
    clipped = u.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    surrogate = torch.minimum(unclipped, clipped)
    weight, capped = _cap(w, keep, iw_cap, iw_cap_mode)
    per_token = torch.where(keep, -weight * surrogate, zero)

    if aggregation == "token":
        count = float(keep.sum()) if denominator is None else denominator
        loss = per_token.sum() / max(count, 1.0)
    else:
        loss = _sequence_mean(per_token, keep, seq, denominator)

    with torch.no_grad():
        metrics = _metrics(keep, u, w, capped, clipped < unclipped, logp - logp_behav)
    return loss, metrics


def _check_inputs(
    logp: torch.Tensor,
    logp_prox: torch.Tensor,
    logp_behav: torch.Tensor,
    mask: torch.Tensor,
    iw_cap: float | None,
    iw_cap_mode: str,
    aggregation: str,
) -> None:
    shapes = {t.shape for t in (logp, logp_prox, logp_behav, mask)}
    if len(shapes) != 1:
        raise ValueError(
            "logp, logp_prox, logp_behav and mask must share one shape, got "
            f"{[tuple(t.shape) for t in (logp, logp_prox, logp_behav, mask)]}"
        )
    if iw_cap_mode not in ("clamp", "mask"):
        raise ValueError(f"iw_cap_mode must be 'clamp' or 'mask', got {iw_cap_mode!r}")
    if aggregation not in ("token", "sequence"):
        raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
    if iw_cap is not None and iw_cap <= 0:
        raise ValueError(f"iw_cap must be > 0 (or None for no cap), got {iw_cap}")


def _sequence_ids(logp: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """Sequence number of every token: the row for [B, T], else ``segment_ids``."""
    if segment_ids is not None:
        if segment_ids.shape != logp.shape:
            raise ValueError(
                f"segment_ids shape {tuple(segment_ids.shape)} != logp shape {tuple(logp.shape)}"
            )
        return segment_ids.to(device=logp.device, dtype=torch.long)
    if logp.dim() != 2:
        raise ValueError(
            f"logp of shape {tuple(logp.shape)}: pass [B, T] rows or segment_ids for packed input"
        )
    rows = torch.arange(logp.shape[0], device=logp.device)
    return rows[:, None].expand_as(logp)


def _per_token(adv: torch.Tensor, logp: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    if adv.shape == logp.shape:
        return adv
    if adv.dim() == 1:
        n_seq = int(seq.max()) + 1 if seq.numel() else 0
        if adv.numel() < n_seq:
            raise ValueError(f"{adv.numel()} per-sequence advantages for {n_seq} sequences")
        return adv[seq]
    raise ValueError(
        f"advantages of shape {tuple(adv.shape)}: give one per token {tuple(logp.shape)} "
        "or one per sequence"
    )


def _cap(
    w: torch.Tensor, keep: torch.Tensor, cap: float | None, mode: CapMode
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight applied per token, and which loss tokens the cap touched."""
    if cap is None:
        return w, torch.zeros_like(keep)
    over = (w > cap) & keep
    if mode == "clamp":
        return w.clamp(max=cap), over
    return torch.where(over, torch.zeros_like(w), w), over


def _sequence_mean(
    per_token: torch.Tensor, keep: torch.Tensor, seq: torch.Tensor, denominator: float | None
) -> torch.Tensor:
    n_seq = int(seq.max()) + 1 if seq.numel() else 0
    flat_seq = seq.reshape(-1)
    sums = per_token.new_zeros(n_seq).index_add(0, flat_seq, per_token.reshape(-1))
    counts = per_token.new_zeros(n_seq).index_add(0, flat_seq, keep.reshape(-1).to(sums.dtype))
    present = counts > 0
    means = torch.where(present, sums / counts.clamp(min=1.0), torch.zeros_like(sums))
    count = float(present.sum()) if denominator is None else denominator
    return means.sum() / max(count, 1.0)


def _metrics(
    keep: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    capped: torch.Tensor,
    clip_active: torch.Tensor,
    log_r_behav: torch.Tensor,
) -> dict[str, float]:
    n = int(keep.sum())
    if n == 0:
        names = ("clip_frac", "ratio_mean", "iw_mean", "iw_max", "iw_capped_frac", "kl_behav_k3")
        return {"tokens": 0.0, **dict.fromkeys(names, 0.0)}
    log_r = log_r_behav[keep].float()
    kl_k3 = (log_r.exp() - 1.0 - log_r).mean()
    return {
        "tokens": float(n),
        "clip_frac": float((clip_active & keep).sum()) / n,
        "ratio_mean": float(u[keep].float().mean()),
        "iw_mean": float(w[keep].float().mean()),
        "iw_max": float(w[keep].float().max()),
        "iw_capped_frac": float(capped.sum()) / n,
        "kl_behav_k3": float(kl_k3),
    }
