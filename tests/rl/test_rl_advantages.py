"""Group-relative advantages against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from areal_flow.rl import batch_scale, group_advantages

# Three interleaved groups:
#   a: rewards 1, 0, 0, 1  → mean 0.5, population std 0.5
#   b: rewards 1, 1, 1     → uniform: advantage 0 everywhere
#   c: rewards 2, 0        → mean 1, population std 1 (the sample std would be √2)
IDS = ["a", "b", "a", "c", "a", "b", "c", "a", "b"]
REWARDS = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 1.0, 1.0])


def test_grpo_divides_by_the_population_std() -> None:
    adv = group_advantages(REWARDS, IDS, estimator="grpo")
    expected = [1.0, 0.0, -1.0, 1.0, -1.0, 0.0, -1.0, 1.0, 0.0]  # ±0.5/0.5 and ±1/1 (not ±1/√2)
    assert adv.tolist() == pytest.approx(expected, rel=1e-5)


def test_grpo_epsilon_guards_uniform_groups() -> None:
    adv = group_advantages(REWARDS, IDS, estimator="grpo", eps=1e-6)
    assert adv[1].item() == 0.0  # 0 / (0 + ε)
    assert adv[0].item() == pytest.approx(0.5 / (0.5 + 1e-6))


def test_drgrpo_only_centres() -> None:
    adv = group_advantages(REWARDS, IDS, estimator="drgrpo")
    assert adv.tolist() == pytest.approx([0.5, 0.0, -0.5, 1.0, -0.5, 0.0, -1.0, 0.5, 0.0])


def test_rloo_subtracts_the_mean_of_the_others() -> None:
    adv = group_advantages(REWARDS, IDS, estimator="rloo")
    # a: 1 − mean(0, 0, 1) = 2/3;  0 − mean(1, 0, 1) = −2/3.  c: 2 − 0 = 2;  0 − 2 = −2.
    third = 2.0 / 3.0
    assert adv.tolist() == pytest.approx([third, 0.0, -third, 2.0, -third, 0.0, -2.0, third, 0.0])


def test_rloo_refuses_a_group_of_one() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), ["a", "a", "b"], estimator="rloo")


def test_batch_scaling_after_the_group_step() -> None:
    # groups c and b only: GRPO gives [1, −1, 0, 0, 0]; batch mean 0, population std √(2/5).
    adv = group_advantages(
        torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0]), [7, 7, 3, 3, 3], batch_norm=True
    )
    s = 1.0 / math.sqrt(0.4)
    assert adv.tolist() == pytest.approx([s, -s, 0.0, 0.0, 0.0], rel=1e-5)
    assert adv[2:].tolist() == [0.0, 0.0, 0.0]  # scaled, not re-centred: uniform stays 0
    assert batch_scale(torch.tensor([1.0, 3.0]), eps=0.0).tolist() == [1.0, 3.0]


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_uniform_groups_get_exactly_zero(estimator: str, batch_norm: bool) -> None:
    """Graded rewards that are all equal: a float32 mean leaves rounding that GRPO's
    (std + ε) division blew up to 0.06-0.19 before."""
    for value in (0.7, 0.98, 1.0 / 3.0, -2.5, 1e6 + 0.1):
        for n in range(2, 17):
            rewards = torch.full((n,), value)
            adv = group_advantages(rewards, ["g"] * n, estimator=estimator, batch_norm=batch_norm)  # type: ignore[arg-type]
            assert adv.tolist() == [0.0] * n, (value, n)
    # Beside a group with signal, the uniform group still gets exact zeros.
    rewards = torch.tensor([0.7] * 5 + [0.1, 0.9, 0.4])
    ids = ["u"] * 5 + ["s"] * 3
    adv = group_advantages(rewards, ids, estimator=estimator, batch_norm=batch_norm)  # type: ignore[arg-type]
    assert adv[:5].tolist() == [0.0] * 5
    assert adv[5:].abs().min() > 0


def test_tensor_group_ids_and_bad_inputs() -> None:
    by_tensor = group_advantages(REWARDS, torch.tensor([0, 1, 0, 2, 0, 1, 2, 0, 1]))
    assert torch.equal(by_tensor, group_advantages(REWARDS, IDS))
    with pytest.raises(ValueError, match="9 rewards but 2 group ids"):
        group_advantages(REWARDS, ["a", "b"])
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        group_advantages(REWARDS, IDS, estimator="ppo")  # type: ignore[arg-type]
