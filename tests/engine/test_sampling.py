"""The engine log-prob definition and the hf engine's sampler (pure torch)."""

from __future__ import annotations

import torch

from areal_flow.engine.sampling import processed_logprobs, sample_tokens


def _logits(rows: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_untruncated_logprobs_are_log_softmax_of_scaled_logits() -> None:
    logits = _logits()
    temps = torch.tensor([0.5, 1.0, 1.7, 0.0])
    got = processed_logprobs(logits, temps, torch.zeros(4, dtype=torch.long), torch.ones(4))
    expected = torch.log_softmax(logits / torch.tensor([0.5, 1.0, 1.7, 1.0])[:, None], dim=-1)
    torch.testing.assert_close(got, expected)


def test_top_k_keeps_k_tokens_and_renormalises() -> None:
    logits = _logits()
    top_k = torch.tensor([1, 5, 0, 50])
    got = processed_logprobs(logits, torch.ones(4), top_k, torch.ones(4))
    assert torch.isfinite(got).sum(dim=-1).tolist() == [1, 5, 50, 50]
    torch.testing.assert_close(got.logsumexp(dim=-1), torch.zeros(4), atol=1e-5, rtol=0)
    kept = torch.isfinite(got[1])
    assert set(kept.nonzero().squeeze(-1).tolist()) == set(logits[1].topk(5).indices.tolist())


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = _logits(rows=1)
    probs = torch.softmax(logits[0], dim=-1)
    got = processed_logprobs(logits, torch.ones(1), None, torch.tensor([0.6]))[0]
    kept = torch.isfinite(got)
    ranked = probs.sort(descending=True).values
    size = int(kept.sum())
    assert ranked[: size - 1].sum() < 0.6 <= ranked[:size].sum()
    assert probs[kept].min() >= probs[~kept].max()


def test_sampling_respects_greedy_rows_and_truncation() -> None:
    logits = _logits(rows=3).repeat(200, 1)
    rows = len(logits)
    temps = torch.tensor([0.0, 1.0, 1.0]).repeat(200)
    top_k = torch.tensor([0, 3, 0]).repeat(200)
    gen = torch.Generator().manual_seed(1)
    tokens, logprobs = sample_tokens(logits, temps, top_k, torch.ones(rows), gen)
    assert (tokens[0::3] == logits[0].argmax()).all()
    assert set(tokens[1::3].tolist()) <= set(logits[1].topk(3).indices.tolist())
    assert len(set(tokens[2::3].tolist())) > 3  # really random
    expected = processed_logprobs(logits, temps, top_k, torch.ones(rows))
    torch.testing.assert_close(logprobs, expected.gather(-1, tokens[:, None]).squeeze(-1))
    again, _ = sample_tokens(
        logits, temps, top_k, torch.ones(rows), torch.Generator().manual_seed(1)
    )
    assert torch.equal(tokens, again)


def test_sample_frequencies_follow_the_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    tokens, _ = sample_tokens(
        logits,
        torch.full((20000,), 0.8),
        torch.zeros(20000, dtype=torch.long),
        torch.ones(20000),
        torch.Generator().manual_seed(0),
    )
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 0.8, dim=-1), atol=0.015, rtol=0)
