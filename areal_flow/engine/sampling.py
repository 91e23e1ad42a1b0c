"""Token sampling and the engine log-prob definition, in plain torch (used by the hf engine).

Rules:
- ``processed_logprobs`` is the one definition of an engine log-prob (see ``engine.base``):
  fp32 ``log_softmax`` of ``logits / T`` (``T = 1`` for greedy rows), after top-k/top-p masking
  when those are active. The trainer can call it to recompute behaviour log-probs exactly.
- Rows may differ in temperature, top-k and top-p; everything is vectorised over rows.
- torch is imported inside functions (this package is importable without torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def processed_logprobs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[rows, vocab]`` log-probs of the sampling distribution; masked tokens get ``-inf``.

    ``temperature``, ``top_k`` (0 = off) and ``top_p`` (1 = off) hold one value per row.
    """
    import torch

    temps = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    scaled = logits.float() / temps.float().unsqueeze(-1)
    if top_k is not None and bool((top_k > 0).any()):
        scaled = _mask_top_k(scaled, top_k)
    if top_p is not None and bool((top_p < 1).any()):
        scaled = _mask_top_p(scaled, top_p)
    return torch.log_softmax(scaled, dim=-1)


def _mask_top_k(scaled: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    import torch

    vocab = scaled.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth = torch.sort(scaled, dim=-1, descending=True).values.gather(-1, (k - 1).unsqueeze(-1))
    return scaled.masked_fill(scaled < kth, float("-inf"))


def _mask_top_p(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``."""
    import torch

    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p; the first
    # token is always kept.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= top_p.float().unsqueeze(-1)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scaled.masked_fill(drop, float("-inf"))


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns ``(token_ids, their processed log-probs)``.

    Rows with ``temperature == 0`` take the argmax of the raw logits.
    """
    import torch

    logprobs = processed_logprobs(logits, temperature, top_k, top_p)
    drawn = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
    greedy = logits.float().argmax(dim=-1)
    tokens = torch.where(temperature > 0, drawn, greedy)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
