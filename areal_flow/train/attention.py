"""Variable-length attention for packed rows in pure torch: ``attn_implementation="areal_packed"``.

Why: with ``sdpa``, transformers runs a packed row (restarting ``position_ids``) under a
block-diagonal N × N mask, so attention costs N² for a row of N tokens whatever its sequences'
lengths, and the mask itself is N² booleans. Here each sequence of the row gets its own causal
``scaled_dot_product_attention`` call: cost Σ Lᵢ², no mask, no padding — what flash-attention's
varlen kernels do on GPU, for any device.

Rules:
- Segments are found from ``position_ids``, which transformers hands every attention call: a
  segment starts wherever a position is not the previous one plus 1. One starting at 0 is a
  sequence of its own; one starting at k > 0 is a branch of a shared prompt
  (``areal_flow.rl.prompt_tree``): it attends to the first k tokens of the latest sequence and
  causally to itself. Only a single row without padding mask and without a cache is split;
  everything else (padded batches, generation) goes to plain ``sdpa`` with the mask transformers
  builds for it.
- The mask builder registered under the same name returns no mask when there is no padding
  mask (packed or single sequence: the attention is causal per segment) and defers to
  ``sdpa_mask`` otherwise.
- ``register()`` is idempotent; the policy calls it before loading a model.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

NAME = "areal_packed"


def register() -> str:
    """Register the attention and its mask builder with transformers; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, packed_mask)
    return NAME


def packed_mask(**kwargs: Any) -> Any:
    """transformers calls mask builders with keyword arguments only."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(**kwargs)


def segment_bounds(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the segments of one packed row, plus its length."""
    positions = position_ids.reshape(-1)
    if positions.numel() == 0 or int(positions[0]) != 0:
        raise ValueError("a packed row must start a sequence at position 0")
    breaks = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    return [0, *breaks.tolist(), int(positions.numel())]


def segments(position_ids: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(start, end, root, k) per segment: it attends to tokens root..root+k−1 of its root
    sequence (k = 0 for a root itself) and causally to start..end−1."""
    positions = position_ids.reshape(-1).tolist()
    out = []
    root = root_len = 0
    for start, end in itertools.pairwise(segment_bounds(position_ids)):
        k = positions[start]
        if k == 0:
            root, root_len = start, end - start
        elif k > root_len:
            raise ValueError(
                f"segment at {start} continues position {k - 1}, beyond its root's "
                f"{root_len} tokens"
            )
        out.append((start, end, root, k))
    return out


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention per sequence of a packed row; ``sdpa`` for any other input."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.get("position_ids")
    q_len = query.shape[2]
    packed = (
        attention_mask is None
        and positions is not None
        and query.shape[0] == 1
        and key.shape[2] == q_len
        and positions.numel() == q_len
    )
    if not packed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    assert positions is not None
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: one K/V head serves several query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    spans = segments(positions)
    # One split per tensor, not a slice per segment: a slice's backward fills a zero tensor the
    # size of the whole row, once per segment and tensor (~13 % of a math_rl step on one core);
    # a split's backward is one concatenation.
    sizes = [end - start for start, end, _, _ in spans]
    queries, keys, values = (t.split(sizes, dim=2) for t in (query, key, value))
    index_of = {start: i for i, (start, _, _, _) in enumerate(spans)}
    outputs = []
    for i, (start, end, root, k) in enumerate(spans):
        q, kk, vv = queries[i], keys[i], values[i]
        if k == 0:
            outputs.append(sdpa(q, kk, vv, dropout_p=dropout, scale=scaling, is_causal=True))
            continue
        # A branch: the shared prompt's keys (the first k of its root's), then its own under a
        # causal mask shifted by k.
        r = index_of[root]
        kk = torch.cat([keys[r][:, :, :k], kk], dim=2)
        vv = torch.cat([values[r][:, :, :k], vv], dim=2)
        n = end - start
        mask = torch.ones(n, k + n, dtype=torch.bool, device=q.device).tril(diagonal=k)
        outputs.append(sdpa(q, kk, vv, attn_mask=mask, dropout_p=dropout, scale=scaling))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None
