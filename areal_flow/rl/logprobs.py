"""Per-token log-probabilities and entropies from logits, without a second [N, V] buffer.

Rules:
- ``token_logprobs(logits, targets, T)`` = log_softmax(logits / T)[target], computed as
  z[target] − logsumexp(z) chunk by chunk over the tokens: the forward pass holds one
  ``chunk_size × V`` buffer (default about ``CHUNK_ELEMENTS`` floats), and the backward pass
  saves only the logits (which the model keeps anyway) and one logsumexp per token, then
  writes the gradient chunk by chunk, in place in the gradient tensor.
- Chunks are computed in place in one reused buffer (the gradient's own rows in backward): a
  fresh 16 MiB temporary per elementwise step, as before, made the pass 1.5–1.8x slower on
  CPU (forward + backward, 3k tokens × 49k vocabulary, bench/trainer.py's batch).
  A plain ``log_softmax(...).gather(...)`` would keep a full [N, V] float32 copy alive for
  backward; for a 49k-token vocabulary that is ~200 kB per token.
- Results are float32 (float64 for float64 logits): bf16 log-probs are too coarse for the
  importance ratios of the PPO loss.
- ``temperature`` must be the generator's sampling temperature, or π_θ and π_behav differ by
  construction.
- ``token_entropy`` is a diagnostic: computed under no_grad, never part of the loss.
- Targets must already be aligned with the logits (position t's logits score token t + 1 of
  the input; see ``areal_flow.rl.packing.PackedRow.next_token_targets``).
"""

from __future__ import annotations

from typing import Any

import torch

#: Elements per temporary chunk when ``chunk_size`` is None: 4M floats = 16 MiB, e.g. 85 tokens
#: of a 49k vocabulary. Larger chunks were no faster on CPU and grew the allocator's peak.
CHUNK_ELEMENTS = 1 << 22


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log π(target | ·) for logits [..., V] and integer targets [...]; shape [...]."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} need targets of shape {tuple(logits.shape[:-1])}, "
            f"got {tuple(targets.shape)}"
        )
    chunk = _chunk_rows(logits, temperature, chunk_size)
    flat = logits.reshape(-1, logits.shape[-1])
    out = _TokenLogprob.apply(flat, targets.reshape(-1).long(), temperature, chunk)
    return out.reshape(targets.shape)


@torch.no_grad()
def token_entropy(
    logits: torch.Tensor, temperature: float = 1.0, *, chunk_size: int | None = None
) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / T) at every position: logits [..., V] → [...]."""
    chunk = _chunk_rows(logits, temperature, chunk_size)
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=_compute_dtype(logits), device=logits.device)
    for start in range(0, flat.shape[0], chunk):
        z = flat[start : start + chunk].to(out.dtype) / temperature
        log_p = z.log_softmax(-1)
        out[start : start + chunk] = -(log_p.exp() * log_p).sum(-1)
    return out.reshape(logits.shape[:-1])


class _TokenLogprob(torch.autograd.Function):
    """Chunked gather of log_softmax(z / T); gradient (onehot − softmax) / T per chunk."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float, chunk: int
    ) -> torch.Tensor:
        dtype = _compute_dtype(logits)
        out = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        buffer = _chunk_buffer(logits, dtype, chunk)
        for start in range(0, logits.shape[0], chunk):
            end = min(start + chunk, logits.shape[0])
            z = _scaled(logits[start:end], temperature, buffer)
            torch.logsumexp(z, dim=-1, out=lse[start:end])
            out[start:end] = z.gather(-1, targets[start:end, None])[:, 0] - lse[start:end]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, targets, lse = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        grad = torch.empty_like(logits)
        # Work straight in the gradient when it has the compute dtype, else in one buffer.
        buffer = None if grad.dtype == lse.dtype else _chunk_buffer(logits, lse.dtype, chunk)
        for start in range(0, logits.shape[0], chunk):
            end = min(start + chunk, logits.shape[0])
            g_out = grad_out[start:end, None].to(lse.dtype) / temperature
            z = _scaled(
                logits[start:end], temperature, grad[start:end] if buffer is None else buffer
            )
            z.sub_(lse[start:end, None]).exp_().mul_(-g_out)  # −softmax · g / T
            z.scatter_add_(-1, targets[start:end, None], g_out)  # + onehot · g / T
            if buffer is not None:
                grad[start:end] = z
        return grad, None, None, None


def _chunk_buffer(logits: torch.Tensor, dtype: torch.dtype, chunk: int) -> torch.Tensor:
    rows = min(chunk, max(1, logits.shape[0]))
    return torch.empty(rows, logits.shape[-1], dtype=dtype, device=logits.device)


def _scaled(rows: torch.Tensor, temperature: float, buffer: torch.Tensor) -> torch.Tensor:
    """rows / T in the compute dtype, written into (the first rows of) ``buffer``."""
    z = buffer[: rows.shape[0]]
    z.copy_(rows)  # convert first: dividing bf16 logits before the cast would round them
    return z.div_(temperature)


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def _chunk_rows(logits: torch.Tensor, temperature: float, chunk_size: int | None) -> int:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (the generator's sampling T), got {temperature}")
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1 token, got {chunk_size}")
    return chunk_size
