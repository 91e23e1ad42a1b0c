"""The verifier and filter nodes on real Arrow batches, outside the runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from areal_flow.node import NodeContext
from areal_flow.nodes.group_filter import GroupFilter, GroupFilterConfig
from areal_flow.nodes.math_verifier import MathVerifier, MathVerifierConfig
from areal_flow.nodes.reward_fn import RewardFn, RewardFnConfig
from areal_flow.schema import SCHEMAS, record_problems


def rollout_rows(
    responses: list[str], answer: str = "7", finish: list[str] | None = None
) -> list[dict[str, Any]]:
    finish = finish or ["stop"] * len(responses)
    return [
        {
            "prompt_id": "p0",
            "group_id": "p0@0",
            "group_size": len(responses),
            "epoch": 0,
            "level": "add1",
            "prompt": "What is 3 + 4?",
            "prompt_token_ids": [1, 2, 3],
            "answer": answer,
            "sample_index": i,
            "response": text,
            "response_token_ids": list(range(len(text.split()))),
            "logprobs": [-0.5] * len(text.split()),
            "versions": [0] * len(text.split()),
            "finish_reason": finish[i],
            "loss_mask": [1] * len(text.split()),
            "episode_metrics": [],
        }
        for i, text in enumerate(responses)
    ]


def ctx_for(config: Any, tmp_path: Path) -> NodeContext:
    return NodeContext(config=config, replica=0, replicas=1, run_dir=tmp_path, seed=0)


def test_verifier_node_scores_a_group(tmp_path: Path) -> None:
    config = MathVerifierConfig(name="reward", workers=1, reward_correct=5, reward_wrong=-5)
    node = MathVerifier(config)
    node.setup(ctx_for(config, tmp_path))
    try:
        batch = pa.RecordBatch.from_pylist(
            rollout_rows(["3 + 4 = 7. The answer is 7.", "The answer is 8.", "I don't know"]),
            schema=SCHEMAS["rollout"],
        )
        scored = asyncio.run(node.process(batch))
    finally:
        node.teardown()
    assert isinstance(scored, pa.RecordBatch)
    assert record_problems(scored.schema, SCHEMAS["scored"]) == []
    assert scored.column("reward").to_pylist() == [5.0, -5.0, -5.0]
    metrics = [dict(m) for m in scored.column("metrics").to_pylist()]
    assert [m["correct"] for m in metrics] == [1.0, 0.0, 0.0]
    assert [m["format_ok"] for m in metrics] == [1.0, 1.0, 0.0]
    assert scored.column("verdict").to_pylist() == ["correct", "wrong", "no_answer"]
    assert node.ctx is not None and node.ctx.metrics.counters["verdict_correct"] == 1


def test_extra_columns_pass_through_the_reward_and_the_filter(tmp_path: Path) -> None:
    """A dataset's own field rides along the rollout, reaches the reward, and stays."""
    config = RewardFnConfig(name="reward", fn="tests.reward.fns:brevity", workers=1)
    node = RewardFn(config)
    node.setup(ctx_for(config, tmp_path))
    try:
        batch = pa.RecordBatch.from_pylist(
            rollout_rows(["The answer is 7.", "no"]), schema=SCHEMAS["rollout"]
        )
        batch = batch.append_column("bonus", pa.array([0.25, 0.75]))
        out = asyncio.run(node.process(batch))
    finally:
        node.teardown()
    assert isinstance(out, pa.RecordBatch)
    assert record_problems(out.schema, SCHEMAS["scored"]) == []
    assert out.column("bonus").to_pylist() == [0.25, 0.75]
    assert [dict(m)["bonus"] for m in out.column("metrics").to_pylist()] == [0.25, 0.75]
    kept, _ = run_filter(tmp_path, out, drop_uniform_reward=False)
    assert kept is not None and kept.column("bonus").to_pylist() == [0.25, 0.75]


def scored(rewards: list[float], finish: list[str] | None = None, words: int = 3) -> pa.RecordBatch:
    rows = rollout_rows([" ".join(["w"] * words)] * len(rewards), finish=finish)
    for row, reward in zip(rows, rewards, strict=True):
        row.update(reward=reward, verdict="x", metrics=[("correct", float(reward > 0))])
    return pa.RecordBatch.from_pylist(rows, schema=SCHEMAS["scored"])


def run_filter(
    tmp_path: Path, batch: pa.RecordBatch, **options: Any
) -> tuple[Any, dict[str, float]]:
    config = GroupFilterConfig(name="filter", **options)
    node = GroupFilter(config)
    node.setup(ctx_for(config, tmp_path))
    out = node.process(batch)
    assert node.ctx is not None
    return out, node.ctx.metrics.counters


def test_filter_drops_uniform_reward_groups(tmp_path: Path) -> None:
    out, counters = run_filter(tmp_path, scored([1, 1, 1, 1]))
    assert out is None and counters["dropped_uniform"] == 4
    out, counters = run_filter(tmp_path, scored([1, 0, 1, 0]))
    assert out is not None and out.num_rows == 4 and counters["kept"] == 4


def test_filter_keeps_uniform_groups_when_asked(tmp_path: Path) -> None:
    out, _ = run_filter(tmp_path, scored([0, 0]), drop_uniform_reward=False)
    assert out is not None and out.num_rows == 2


@pytest.mark.parametrize(("mode", "rows"), [("keep", 3), ("drop", 2), ("drop_group", 0)])
def test_filter_truncation_modes(tmp_path: Path, mode: str, rows: int) -> None:
    batch = scored([1, 0, 1], finish=["stop", "stop", "length"])
    out, _ = run_filter(tmp_path, batch, truncated=mode)
    assert (0 if out is None else out.num_rows) == rows


def test_filter_length_limit_then_uniform_check(tmp_path: Path) -> None:
    batch = pa.concat_batches([scored([1, 0], words=2), scored([0], words=9)])
    out, counters = run_filter(tmp_path, batch, max_response_tokens=5)
    assert out is not None and out.num_rows == 2 and counters["dropped_too_long"] == 1
    batch = pa.concat_batches([scored([1], words=2), scored([0], words=9)])
    out, counters = run_filter(tmp_path, batch, max_response_tokens=5)
    assert out is None, "after the long one goes, the rest is uniform"
