"""Inserted tokens (loss_mask 0) are context only: packed and shared-prompt forward passes give
the log-probs and gradients of separate plain forward passes with those tokens excluded."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch

from areal_flow.train.algo import DecoupledPPO
from areal_flow.train.batch import rows_of_minibatch, to_sequences
from areal_flow.train.session import TrainingSession
from tests.train.scored import load_model, scored_group
from tests.train.test_trainer_step import REWARDS, config


def masked_groups(model_dir: Path) -> list[pa.RecordBatch]:
    """Two groups whose responses have tokens 2..4 inserted: mask 0, log-prob 0 (as episodes
    write them; counted, that log-prob would give importance weights far from 1)."""
    model = load_model(model_dir)
    out = []
    for g, rewards in enumerate(REWARDS):
        batch = scored_group(model, f"0:{g}", rewards, seed=g, response_lens=[7, 9, 6, 8])
        masks, logprobs = [], []
        for lp in batch.column("logprobs").to_pylist():
            mask = [0 if 2 <= t <= 4 else 1 for t in range(len(lp))]
            masks.append(mask)
            logprobs.append([v if m else 0.0 for v, m in zip(lp, mask, strict=True)])
        batch = batch.set_column(
            batch.schema.get_field_index("loss_mask"),
            batch.schema.field("loss_mask"),
            pa.array(masks, pa.list_(pa.int8())),
        )
        batch = batch.set_column(
            batch.schema.get_field_index("logprobs"),
            batch.schema.field("logprobs"),
            pa.array(logprobs, pa.list_(pa.float32())),
        )
        out.append(batch)
    return out


def reference_gradient(model_dir: Path, table: pa.Table) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Separate plain HF forward passes; token-mean PPO loss at ratio 1 over sampled tokens:
    -Σ w·A·log π / N with w = π_prox/π_behav (π_prox = π_θ here, K = 1)."""
    model = load_model(model_dir)
    model.train()
    seqs = to_sequences(table)
    total = sum(s.loss_tokens for s in seqs)
    logps = []
    loss = torch.zeros(())
    for s in seqs:
        logits = model(input_ids=s.tokens[None]).logits[0].float()
        scoring = logits[s.prompt_len - 1 : -1]
        logp = torch.log_softmax(scoring, -1).gather(1, s.tokens[s.prompt_len :, None])[:, 0]
        logps.append(logp.detach())
        keep = s.loss_mask
        w = torch.exp(logp.detach() - s.behav)
        loss = loss - (w * s.advantage * logp)[keep].sum() / total
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]), logps  # type: ignore[union-attr]


@pytest.mark.parametrize(("budget", "share"), [(64, True), (100_000, True), (100_000, False)])
def test_masked_tokens_get_no_loss_and_no_gradient(
    tiny_model_dir: Path, tmp_path: Path, budget: int, share: bool
) -> None:
    algo = DecoupledPPO(iw_cap=5.0)
    cfg = config(tiny_model_dir, micro_batch_tokens=budget, algo=algo, share_prompts=share)
    session = TrainingSession(cfg, temperature=1.0, run_dir=tmp_path, store="run_dir")
    batch_metrics = session.prepare(masked_groups(tiny_model_dir))
    assert session.batch is not None
    table = rows_of_minibatch(session.batch, 0)
    expected, reference_logps = reference_gradient(tiny_model_dir, table)

    seqs = to_sequences(table)
    logps, _ = session.policy.response_logprobs(seqs)
    for got, want in zip(logps, reference_logps, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # every token is scored

    metrics = session.policy.train_step(seqs, algo, prox_from_forward=True)
    grad = torch.cat([p.grad.flatten() for p in session.policy.model.parameters()])  # type: ignore[union-attr]
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-4)
    assert float(grad.abs().sum()) > 0
    sampled = sum(int(s.sampled.sum()) for s in seqs)
    assert metrics["loss_tokens"] == sampled == sum(len(s.behav) - 3 for s in seqs)
    # Counted, the inserted tokens' log-prob 0 would drag the mean importance weight far down.
    assert metrics["iw_mean"] == pytest.approx(1.0, abs=1e-4)
    assert batch_metrics["sampled_len_mean"] == pytest.approx(sampled / len(seqs))


def test_lags_count_sampled_tokens_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    groups = masked_groups(tiny_model_dir)
    # Inserted tokens claim an ancient version: a lag computed over them would be huge.
    for i, batch in enumerate(groups):
        versions = [
            [0 if m else -50 for m in mask] for mask in batch.column("loss_mask").to_pylist()
        ]
        groups[i] = batch.set_column(
            batch.schema.get_field_index("versions"),
            batch.schema.field("versions"),
            pa.array(versions, pa.list_(pa.int32())),
        )
    cfg = config(tiny_model_dir)
    session = TrainingSession(cfg, temperature=1.0, run_dir=tmp_path, store="run_dir")
    session.prepare(groups)
    _, metrics = session.train_next()
    assert metrics["lag_max"] == 0.0 and metrics["token_lag_mean"] == 0.0
