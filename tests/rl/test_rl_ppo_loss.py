"""The decoupled PPO loss against hand-computed values and an independent PPO implementation."""

from __future__ import annotations

import math

import pytest
import torch

from areal_flow.rl import decoupled_ppo_loss

# Two sequences, probabilities chosen so every ratio is exact.  ε_low = ε_high = 0.2.
#  token  π_θ   π_prox π_behav   u=θ/prox  w=prox/behav  Â   min(uÂ, clip(u)Â)     loss=−w·min
#  A1     0.5   0.4    0.4       1.25      1             +1  min(1.25, 1.2) = 1.2   −1.2 (clip)
#  A2     0.3   0.3    0.6       1         0.5           +1  1                      −0.5
#  A3     0.18  0.25   0.25      0.72      1             +1  min(0.72, 0.8) = 0.72  −0.72
#  B1     0.1   0.2    0.05      0.5       4             −2  min(−1, −1.6) = −1.6   +6.4 (clip)
#  B2     0.9   0.6    0.8       1.5       0.75          −2  min(−3, −2.4) = −3     +2.25
#  B3     padding (mask 0; garbage values)
P_THETA = [[0.5, 0.3, 0.18], [0.1, 0.9, 1.0]]
P_PROX = [[0.4, 0.3, 0.25], [0.2, 0.6, 1.0]]
P_BEHAV = [[0.4, 0.6, 0.25], [0.05, 0.8, 1.0]]
ADV = torch.tensor([1.0, -2.0])  # per sequence
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
TOKEN_LOSSES = [-1.2, -0.5, -0.72, 6.4, 2.25]


def _logs(p: list[list[float]], pad: float) -> torch.Tensor:
    t = torch.tensor(p, dtype=torch.float64).log()
    t[1, 2] = pad  # what sits under the mask must not matter
    return t


def inputs(requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logp = _logs(P_THETA, float("nan")).requires_grad_(requires_grad)
    return logp, _logs(P_PROX, float("-inf")), _logs(P_BEHAV, float("inf"))


def loss_of(**kwargs: object) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    logp, prox, behav = inputs()
    options: dict = {"eps_low": 0.2, "eps_high": 0.2, **kwargs}
    loss, metrics = decoupled_ppo_loss(logp, prox, behav, ADV, MASK, **options)
    loss.backward()
    assert logp.grad is not None
    return loss, metrics, logp.grad


def test_token_mean_by_hand() -> None:
    loss, metrics, grad = loss_of()
    assert loss.item() == pytest.approx(sum(TOKEN_LOSSES) / 5)  # 6.23 / 5 = 1.246
    assert metrics["tokens"] == 5
    assert metrics["clip_frac"] == pytest.approx(2 / 5)  # A1 and B1
    assert metrics["iw_mean"] == pytest.approx((1 + 0.5 + 1 + 4 + 0.75) / 5)
    assert metrics["iw_max"] == pytest.approx(4.0)
    assert metrics["ratio_mean"] == pytest.approx((1.25 + 1 + 0.72 + 0.5 + 1.5) / 5)
    r = [1.25, 0.5, 0.72, 2.0, 1.125]  # π_θ / π_behav
    assert metrics["kl_behav_k3"] == pytest.approx(sum(x - 1 - math.log(x) for x in r) / 5)
    # d loss / d logp_θ = −w·u·Â / 5 where unclipped, 0 where the clip is active or masked.
    expected = [[0.0, -0.5 * 1 * 1 / 5, -1 * 0.72 * 1 / 5], [0.0, -0.75 * 1.5 * -2 / 5, 0.0]]
    assert grad.tolist() == [pytest.approx(row) for row in expected]


def test_sequence_mean_by_hand() -> None:
    loss, _, _ = loss_of(aggregation="sequence")
    seq_a = (-1.2 - 0.5 - 0.72) / 3
    seq_b = (6.4 + 2.25) / 2
    assert loss.item() == pytest.approx((seq_a + seq_b) / 2)  # 1.759166…


def test_cap_mask_drops_tokens_but_keeps_the_denominator() -> None:
    loss, metrics, grad = loss_of(iw_cap=2.0, iw_cap_mode="mask")
    assert loss.item() == pytest.approx((-1.2 - 0.5 - 0.72 + 0.0 + 2.25) / 5)  # B1 (w = 4) gone
    assert metrics["iw_capped_frac"] == pytest.approx(1 / 5)
    assert grad[1, 0].item() == 0.0


def test_cap_clamp_limits_the_weight() -> None:
    loss, metrics, _ = loss_of(iw_cap=2.0, iw_cap_mode="clamp")
    assert loss.item() == pytest.approx((-1.2 - 0.5 - 0.72 + 2 * 1.6 + 2.25) / 5)
    assert metrics["iw_capped_frac"] == pytest.approx(1 / 5)
    assert metrics["iw_max"] == pytest.approx(4.0)  # reported before the cap


def test_masked_tokens_get_no_gradient_even_when_unclipped() -> None:
    # A3 (w = 1) and B2 (w = 0.75) are unclipped, so they have a gradient uncapped; a cap of
    # 0.7 masks every token but A2 (w = 0.5).
    _, _, uncapped = loss_of()
    loss, metrics, grad = loss_of(iw_cap=0.7, iw_cap_mode="mask")
    assert uncapped[1, 1].item() != 0.0 and grad[1, 1].item() == 0.0
    assert uncapped[0, 2].item() != 0.0 and grad[0, 2].item() == 0.0
    assert grad[0, 1].item() == pytest.approx(uncapped[0, 1].item())  # A2 untouched
    assert loss.item() == pytest.approx(-0.5 / 5) and metrics["iw_capped_frac"] == 0.8


def ppo_reference(
    logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps: float
) -> torch.Tensor:
    """Standard PPO-clip, written independently: −E[min(r·A, clip(r)·A)] over valid tokens."""
    ratio = torch.exp(logp - old)
    objective = torch.min(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    return -(objective * mask).sum() / mask.sum()


def test_equals_standard_ppo_when_prox_is_behav() -> None:
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 7, generator=gen, dtype=torch.float64) * 3
    logp = (old + torch.randn(4, 7, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
    adv = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 7, generator=gen) > 0.3
    loss, metrics = decoupled_ppo_loss(logp, old, old, adv, mask, eps_low=0.2, eps_high=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    ref = ppo_reference(logp, old, adv, mask.double(), 0.2)
    (ref_grad,) = torch.autograd.grad(ref, logp)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad, ref_grad)
    assert metrics["iw_mean"] == 1.0 and 0 < metrics["clip_frac"] < 1


def test_micro_batches_add_up_to_the_batch_with_a_shared_denominator() -> None:
    for aggregation, denominator in (("token", 5.0), ("sequence", 2.0)):
        whole, _, _ = loss_of(aggregation=aggregation)
        logp, prox, behav = inputs()
        parts = [
            decoupled_ppo_loss(
                logp[i : i + 1], prox[i : i + 1], behav[i : i + 1], ADV[i : i + 1],
                MASK[i : i + 1], eps_low=0.2, eps_high=0.2, aggregation=aggregation,
                denominator=denominator,
            )[0]
            for i in range(2)
        ]  # fmt: skip
        assert sum(p.item() for p in parts) == pytest.approx(whole.item())


def test_packed_layout_with_segment_ids_matches_rows() -> None:
    logp, prox, behav = inputs()
    flat = [t[MASK] for t in (logp, prox, behav)]  # 5 packed tokens, no padding
    segments = torch.tensor([0, 0, 0, 1, 1])
    for aggregation in ("token", "sequence"):
        packed, _ = decoupled_ppo_loss(
            *flat, ADV, torch.ones(5, dtype=torch.bool), eps_low=0.2, eps_high=0.2,
            aggregation=aggregation, segment_ids=segments,
        )  # fmt: skip
        rows, _, _ = loss_of(aggregation=aggregation)
        assert packed.item() == pytest.approx(rows.item())


def test_empty_mask_gives_zero_and_bad_shapes_are_refused() -> None:
    logp, prox, behav = inputs()
    loss, metrics = decoupled_ppo_loss(logp, prox, behav, ADV, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad and metrics["tokens"] == 0
    with pytest.raises(ValueError, match="share one shape"):
        decoupled_ppo_loss(logp, prox[:, :2], behav, ADV, MASK)
    with pytest.raises(ValueError, match="segment_ids"):
        decoupled_ppo_loss(logp.flatten(), prox.flatten(), behav.flatten(), ADV, MASK.flatten())
