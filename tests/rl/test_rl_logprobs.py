"""Chunked token log-probs and entropies against closed forms and the plain torch path."""

from __future__ import annotations

import math

import pytest
import torch

from areal_flow.rl import token_entropy, token_logprobs


def test_logprobs_by_hand() -> None:
    # logits log 1, log 2, log 3 → softmax 1/6, 2/6, 3/6
    logits = torch.tensor([[0.0, math.log(2), math.log(3)]] * 2)
    out = token_logprobs(logits, torch.tensor([2, 0]))
    assert out.tolist() == pytest.approx([math.log(0.5), math.log(1 / 6)])
    # T = 2 halves the logits: softmax ∝ 1, √2, √3
    hot = token_logprobs(logits, torch.tensor([2, 0]), temperature=2.0)
    z = 1 + math.sqrt(2) + math.sqrt(3)
    assert hot.tolist() == pytest.approx([math.log(math.sqrt(3) / z), math.log(1 / z)])


def test_entropy_by_hand() -> None:
    uniform = torch.zeros(3, 8)
    assert token_entropy(uniform).tolist() == pytest.approx([math.log(8)] * 3)
    two_way = torch.tensor([[0.0, 0.0, -1e9]])  # half/half over two tokens
    assert token_entropy(two_way).item() == pytest.approx(math.log(2))
    assert token_entropy(two_way, temperature=3.0).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 64])
def test_chunked_values_and_gradients_match_log_softmax(chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    weights = torch.randn(2, 5, generator=gen)
    out = token_logprobs(logits, targets, temperature=0.7, chunk_size=chunk_size)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)

    ref = (logits / 0.7).log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    entropy = token_entropy(logits, 0.7, chunk_size=chunk_size)
    p = (logits / 0.7).softmax(-1)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1), atol=1e-5)
    assert not entropy.requires_grad


def test_gradcheck_in_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (4,), generator=gen)
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, targets, temperature=1.3, chunk_size=3), (logits,)
    )


def test_bf16_logits_give_float32_logprobs() -> None:
    logits = torch.randn(3, 7).to(torch.bfloat16).requires_grad_()
    out = token_logprobs(logits, torch.tensor([0, 1, 2]))
    assert out.dtype == torch.float32
    out.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("chunk_size", [2, 64])
def test_bf16_logits_are_upcast_before_scaling(chunk_size: int) -> None:
    """Values, gradients and entropies equal the fp32 computation on the upcast logits."""
    gen = torch.Generator().manual_seed(2)
    logits = (4 * torch.randn(5, 13, generator=gen)).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 13, (5,), generator=gen)
    weights = torch.randn(5, generator=gen)
    out = token_logprobs(logits, targets, temperature=0.7, chunk_size=chunk_size)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)

    upcast = logits.detach().float().requires_grad_()
    ref = (upcast / 0.7).log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), upcast)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad.to(torch.bfloat16))
    p = (upcast / 0.7).softmax(-1)
    torch.testing.assert_close(
        token_entropy(logits, 0.7, chunk_size=chunk_size), -(p * p.log()).sum(-1)
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="targets of shape"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)
