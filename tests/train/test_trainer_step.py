"""The trainer's compute: π_prox recomputation, one optimizer step, gradient accumulation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from areal_flow.nodes.trainer import TrainerConfig
from areal_flow.train.algo import DecoupledPPO, Optimizer
from areal_flow.train.batch import rows_of_minibatch, to_sequences
from areal_flow.train.policy import Policy, lr_factor
from areal_flow.train.session import TrainingSession
from tests.train.scored import load_model, scored_group

REWARDS = [(1.0, 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 0.0)]


def config(model_dir: Path, **overrides: object) -> TrainerConfig:
    values: dict[str, object] = {
        "name": "trainer",
        "model": str(model_dir),
        "batch_groups": 2,
        "steps": 100,
        "bf16": False,
        "optimizer": Optimizer(lr=1e-3, grad_clip=1e9),
        "micro_batch_tokens": 64,
        **overrides,
    }
    return TrainerConfig.model_validate(values)


def groups(model_dir: Path, temperature: float = 1.0) -> list:
    model = load_model(model_dir)
    return [
        scored_group(model, f"0:{g}", rewards, seed=g, temperature=temperature)
        for g, rewards in enumerate(REWARDS)
    ]


@pytest.mark.parametrize(("bf16", "atol"), [(False, 1e-5), (True, 0.05)])
def test_prox_logprobs_equal_behaviour_when_weights_are_unchanged(
    tiny_model_dir: Path, tmp_path: Path, bf16: bool, atol: float
) -> None:
    # K = 2 minibatches: π_prox is recomputed for the whole batch before the first update.
    algo = DecoupledPPO(updates_per_batch=2)
    cfg = config(tiny_model_dir, bf16=bf16, temperature=0.7, algo=algo)
    session = TrainingSession(
        cfg, temperature=cfg.temperature or 1.0, run_dir=tmp_path, store="run_dir"
    )
    session.prepare(groups(tiny_model_dir, temperature=0.7))
    assert session.batch is not None
    prox = session.batch.column("prox_logprobs").to_pylist()
    behav = session.batch.column("logprobs").to_pylist()
    for p, b in zip(prox, behav, strict=True):
        assert len(p) == len(b)
        torch.testing.assert_close(torch.tensor(p), torch.tensor(b), atol=atol, rtol=0)
    _, metrics = session.train_next()
    assert metrics["ratio_mean"] == 1.0  # π_θ = π_prox exactly before the first update
    assert metrics["clip_frac"] == 0.0
    assert metrics["iw_mean"] == pytest.approx(1.0, abs=atol * 2)


@pytest.mark.parametrize(("bf16", "atol"), [(False, 1e-5), (True, 0.05)])
def test_single_minibatch_takes_prox_from_the_update_forward(
    tiny_model_dir: Path, tmp_path: Path, bf16: bool, atol: float
) -> None:
    cfg = config(tiny_model_dir, bf16=bf16, temperature=0.7)  # K = 1
    session = TrainingSession(
        cfg, temperature=cfg.temperature or 1.0, run_dir=tmp_path, store="run_dir"
    )
    batch_metrics = session.prepare(groups(tiny_model_dir, temperature=0.7))
    assert "entropy" not in batch_metrics  # no separate π_prox pass ran
    _, metrics = session.train_next()
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_frac"] == 0.0
    # π_prox (this forward) vs π_behav (the sampler): the same weights, so IW ≈ 1.
    assert metrics["iw_mean"] == pytest.approx(1.0, abs=atol * 2)
    assert metrics["entropy"] > 0


def test_repeated_steps_on_a_fixed_batch_lower_the_loss(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # K = 2 so prepare() stores π_prox for every row; the steps below all use that fixed π_prox.
    algo = DecoupledPPO(updates_per_batch=2)
    cfg = config(tiny_model_dir, optimizer=Optimizer(lr=3e-3), algo=algo)
    session = TrainingSession(
        cfg, temperature=cfg.temperature or 1.0, run_dir=tmp_path, store="run_dir"
    )
    session.prepare(groups(tiny_model_dir))
    assert session.batch is not None
    seqs = to_sequences(session.batch)
    before, _ = session.policy.response_logprobs(seqs)
    losses = [session.policy.train_step(seqs, cfg.algo)["loss"] for _ in range(6)]
    after, _ = session.policy.response_logprobs(seqs)
    assert losses[-1] < losses[0] - 0.05, losses
    for seq, old, new in zip(seqs, before, after, strict=True):
        moved = float((new - old).sum())
        # the update raises the likelihood of better-than-group responses, lowers the others
        assert moved * seq.advantage > 0, (seq.advantage, moved)


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_gradient_does_not_depend_on_micro_batching(
    tiny_model_dir: Path, tmp_path: Path, aggregation: str
) -> None:
    algo = DecoupledPPO.model_validate({"aggregation": aggregation})
    grads = []
    # many micro-batches (groups split, each part with its prompt) vs one, prompts shared or not
    for budget, share in ((64, True), (100_000, True), (100_000, False)):
        cfg = config(tiny_model_dir, micro_batch_tokens=budget, algo=algo, share_prompts=share)
        session = TrainingSession(
            cfg, temperature=cfg.temperature or 1.0, run_dir=tmp_path, store="run_dir"
        )
        session.prepare(groups(tiny_model_dir))
        assert session.batch is not None
        seqs = to_sequences(rows_of_minibatch(session.batch, 0))
        assert (len(session.policy.micro_batches(seqs)) == 1) == (budget > 1000)
        session.policy.train_step(seqs, algo, prox_from_forward=True)  # K = 1
        grads.append(
            torch.cat([p.grad.flatten() for p in session.policy.model.parameters()])  # type: ignore[union-attr]
        )
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[2], atol=1e-6, rtol=1e-4)
    assert float(grads[0].abs().sum()) > 0


def test_masked_truncated_responses_get_no_gradient(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_model_dir)
    batch = scored_group(model, "0:0", [1.0, 0.0], seed=3, finish_reasons=["length", "length"])
    cfg = config(tiny_model_dir, batch_groups=1, truncated="mask")
    session = TrainingSession(
        cfg, temperature=cfg.temperature or 1.0, run_dir=tmp_path, store="run_dir"
    )
    metrics = session.prepare([batch])
    assert metrics["truncated_frac"] == 1.0
    _, step = session.train_next()
    assert step["loss_tokens"] == 0.0
    assert all(p.grad is None or not p.grad.any() for p in session.policy.model.parameters())


def test_lr_schedule_warms_up_then_decays() -> None:
    cosine = lr_factor(warmup=4, schedule="cosine", total=14)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(9) == pytest.approx(0.5)
    assert cosine(14) == pytest.approx(0.0)
    assert lr_factor(0, "linear", 10)(5) == pytest.approx(0.5)
    assert lr_factor(2, "constant", 10)(7) == 1.0


def test_policy_loads_fp32_and_keeps_params_fp32_under_bf16(tiny_model_dir: Path) -> None:
    policy = Policy(tiny_model_dir, optimizer=Optimizer(), total_steps=1, bf16=True)
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}


def test_switching_bf16_on_a_policy_changes_what_it_computes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """bench/trainer.py switches ``policy.bf16`` between its rows; the scorer must follow (it
    did not, and the bench's 'bf16' rows of the shared and packed modes computed in fp32)."""
    session = TrainingSession(
        config(tiny_model_dir), temperature=1.0, run_dir=tmp_path, store="run_dir"
    )
    session.prepare(groups(tiny_model_dir))
    assert session.batch is not None
    seqs, policy = to_sequences(session.batch), session.policy
    fp32, _ = policy.response_logprobs(seqs)
    policy.bf16 = True
    assert policy.scorer.bf16
    bf16, _ = policy.response_logprobs(seqs)
    assert any(not torch.equal(a, b) for a, b in zip(fp32, bf16, strict=True))
    policy.bf16 = False
    again, _ = policy.response_logprobs(seqs)
    assert all(torch.equal(a, b) for a, b in zip(fp32, again, strict=True))


def test_auto_bf16_follows_the_device(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from areal_flow import precision

    asked: list[str] = []
    for native in (True, False):

        def fake(device: str, native: bool = native) -> bool:
            asked.append(device)
            return native

        monkeypatch.setattr(precision, "native_bf16", fake)
        cfg = config(tiny_model_dir, bf16="auto")
        session = TrainingSession(cfg, temperature=1.0, run_dir=tmp_path, store="run_dir")
        try:
            assert session.policy.bf16 is native
        finally:
            session.close()
    assert asked == ["cpu", "cpu"]  # the trainer's own device


def test_a_non_finite_gradient_skips_the_step_and_repeated_ones_stop(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Issue 15: one NaN gradient (``error_if_nonfinite=True``) used to kill the run."""
    from areal_flow.train.policy import NonFiniteGradients

    cfg = config(tiny_model_dir, optimizer=Optimizer(lr=1e-3, max_bad_steps=2))
    session = TrainingSession(cfg, temperature=1.0, run_dir=tmp_path, store="run_dir")
    session.prepare(groups(tiny_model_dir))
    assert session.batch is not None
    good_seqs = to_sequences(session.batch)
    # A NaN advantage poisons every gradient through the loss.
    bad_seqs = [replace(good_seqs[0], advantage=float("nan")), *good_seqs[1:]]
    policy = session.policy
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    metrics = policy.train_step(bad_seqs, cfg.algo, prox_from_forward=True)
    assert metrics["skipped"] == 1.0 and metrics["skipped_steps"] == 1.0
    after = policy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the weights are untouched
    good = policy.train_step(good_seqs, cfg.algo, prox_from_forward=True)  # resets the count
    assert good["skipped"] == 0.0 and good["skipped_steps"] == 1.0
    assert any(not torch.equal(before[k], policy.model.state_dict()[k]) for k in before)
    policy.train_step(bad_seqs, cfg.algo, prox_from_forward=True)
    with pytest.raises(NonFiniteGradients, match="2 optimizer steps in a row"):
        policy.train_step(bad_seqs, cfg.algo, prox_from_forward=True)
