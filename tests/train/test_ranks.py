"""A trainer of 2 ranks (real processes, gloo, FSDP2) trains exactly like one process: same
π_prox, same losses and gradient norms, same updated weights; its sharded checkpoint resumes
with one rank, optimizer state included."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from areal_flow.train.algo import DecoupledPPO
from areal_flow.train.policy import OPTIM_DIR
from areal_flow.train.ranks import RankFailed, core_shares
from areal_flow.train.session import TrainingSession
from areal_flow.train.shards import balanced_shares
from tests.train.scored import load_model, scored_group
from tests.train.test_trainer_step import config

REWARDS = [(1.0, 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 0.0), (1.0, 1.0, 0.0, 0.0)]


def groups(model_dir: Path) -> list:
    model = load_model(model_dir)
    return [scored_group(model, f"0:{g}", r, seed=g) for g, r in enumerate(REWARDS)]


def session(
    model_dir: Path, run_dir: Path, ranks: int, timeout_s: float = 60, **extra: Any
) -> TrainingSession:
    # K = 2: π_prox is a separate (gathered) pass; 64-token micro-batches: several per rank.
    cfg = config(
        model_dir,
        ranks=ranks,
        rank_timeout_s=timeout_s,
        algo=DecoupledPPO(updates_per_batch=2),
        micro_batch_tokens=64,
    )
    return TrainingSession(cfg, temperature=1.0, run_dir=run_dir, store="run_dir", **extra)


def train_batch(s: TrainingSession, batch: list) -> tuple[list[list[float]], list[dict]]:
    """π_prox of the batch, then the metrics of its two optimizer steps."""
    s.prepare(batch)
    assert s.batch is not None
    prox = s.batch.column("prox_logprobs").to_pylist()
    out = []
    for _ in range(2):
        future, metrics = s.train_next()
        future.result()
        out.append(metrics)
    return prox, out


def test_shares_keep_prompts_together_and_balance_tokens() -> None:
    keys = ["a", "a", "b", "c", "c", "c"]
    shares = balanced_shares(keys, [10] * 6, [5, 5, 30, 1, 1, 1], ranks=2)
    assert sorted(i for s in shares for i in s) == list(range(6))
    assert shares == [[2], [0, 1, 3, 4, 5]]  # b costs 40; a (20) and c (13) together 33
    assert balanced_shares(["a"], [3], [4], ranks=3) == [[0], [], []]


def test_ranks_get_one_gpu_each_or_none(tiny_model_dir: Path) -> None:
    assert config(tiny_model_dir, ranks=2, resources={"cpus": 2, "gpus": 2}).ranks == 2
    with pytest.raises(ValueError, match=r"ranks = 2 with resources.gpus = 1; give each rank"):
        config(tiny_model_dir, ranks=2, resources={"cpus": 2, "gpus": 1})
    assert core_shares([4, 5, 6, 7, 8], 2) == [[4, 5], [6, 7]]
    assert core_shares([4], 2) == [[], []]  # fewer cores than ranks: they share them


@pytest.mark.slow
def test_two_ranks_train_like_one_and_checkpoints_cross_rank_counts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    batch = groups(tiny_model_dir)
    one = session(tiny_model_dir, tmp_path / "one", ranks=1)
    prox_one, one_metrics = train_batch(one, batch)
    two = session(tiny_model_dir, tmp_path / "two", ranks=2)
    try:
        prox_two, two_metrics = train_batch(two, batch)
        weights = two.policy.state_dict()
        path = two.checkpoint(two.snapshot())
    finally:
        two.close()
    # π_prox: the same batch through the same weights, part of it on each rank.
    for a, b in zip(prox_one, prox_two, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)
    for m1, m2 in zip(one_metrics, two_metrics, strict=True):
        for name in ("loss", "grad_norm", "ratio_mean", "sequences", "loss_tokens", "lr"):
            assert m2[name] == pytest.approx(m1[name], rel=1e-4, abs=1e-6), name
    expected = one.policy.state_dict()
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-4, msg=name)

    # The sharded checkpoint resumes with one rank: weights, step and AdamW state.
    assert (path / OPTIM_DIR).is_dir()
    resumed = session(tiny_model_dir, tmp_path / "resumed", ranks=1, resume_from=path)
    assert (resumed.step, resumed.version) == (2, 2)
    for name, value in expected.items():
        torch.testing.assert_close(resumed.policy.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    state_one = one.policy.optimizer.state_dict()["state"]
    state_resumed = resumed.policy.optimizer.state_dict()["state"]
    assert state_one.keys() == state_resumed.keys()
    for key, moments in state_one.items():
        for part in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(
                state_resumed[key][part], moments[part], atol=1e-6, rtol=1e-4
            )

    # A one-process checkpoint resumes with two ranks: the next batch (AdamW's update depends
    # on the restored moments) gives the weights one process gets.
    path_one = one.checkpoint(one.snapshot())
    assert not (path_one / OPTIM_DIR).exists()
    _, after_one = train_batch(one, batch)
    two = session(tiny_model_dir, tmp_path / "two_again", ranks=2, resume_from=path_one)
    try:
        _, after_two = train_batch(two, batch)
        weights = two.policy.state_dict()
    finally:
        two.close()
    assert after_two[-1]["loss"] == pytest.approx(after_one[-1]["loss"], rel=1e-4, abs=1e-6)
    for name, value in one.policy.state_dict().items():
        torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_a_rank_that_never_arrives_is_named_after_the_timeout(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    batch = groups(tiny_model_dir)
    two = session(tiny_model_dir, tmp_path, ranks=2, timeout_s=3)
    (child,) = two.policy.group.children.values()  # type: ignore[attr-defined]
    os.kill(child.pid, signal.SIGSTOP)  # alive, but never takes up the next command
    try:
        began = time.monotonic()
        with pytest.raises(RankFailed, match="rank 1 did not arrive at 'logprobs'"):
            two.prepare(batch)
        assert time.monotonic() - began < 3 + 10
    finally:
        os.kill(child.pid, signal.SIGCONT)
        two.abort()
        two.close()
    assert child.poll() is not None  # killed, not left behind
