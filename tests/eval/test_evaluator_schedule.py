"""The evaluator node's schedule: version 0, then every N, skipping notices while it is busy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from areal_flow.node import NodeContext
from areal_flow.nodes.evaluator import Evaluator, EvaluatorConfig


class FakeEngine:
    def __init__(self) -> None:
        self.loaded: list[int] = []

    async def update_weights(self, version: int, path: str) -> None:
        self.loaded.append(version)


def evaluator(tmp_path: Path, every: int, busy_s: dict[int, float], version: int = 0) -> Any:
    config = EvaluatorConfig(name="eval", model=str(tmp_path), every=every)
    node = Evaluator(config)
    node.ctx = NodeContext(config=config, replica=0, replicas=1, run_dir=tmp_path, seed=0)
    node.ctx.version = version
    node.engine = FakeEngine()
    node.next_due = 0
    node.task = None
    node.scored = []

    async def score(v: int) -> None:
        await asyncio.sleep(busy_s.get(v, 0.0))
        node.scored.append(v)

    node._evaluate = score
    return node


async def notices(versions: list[int], gap_s: float = 0.01) -> AsyncIterator[pa.RecordBatch]:
    for v in versions:
        await asyncio.sleep(gap_s)
        yield pa.RecordBatch.from_pylist([{"version": v, "path": f"/w/{v}"}])


async def drain(node: Any, versions: list[int]) -> None:
    async for _ in node.run(notices(versions)):
        pass


def test_scores_version_0_then_every_n(tmp_path: Path) -> None:
    node = evaluator(tmp_path, every=2, busy_s={})
    asyncio.run(drain(node, list(range(1, 8))))
    assert node.scored == [0, 2, 4, 6]
    assert node.engine.loaded == [2, 4, 6]  # each loaded as its notice arrived


def test_a_slow_evaluation_skips_to_the_first_notice_past_it(tmp_path: Path) -> None:
    node = evaluator(tmp_path, every=2, busy_s={2: 0.1})  # version 2 takes ~10 notices
    asyncio.run(drain(node, list(range(1, 20))))
    assert node.scored[:2] == [0, 2]
    assert node.scored[2] > 4  # 4 passed by while 2 was scored; the next due one is taken
    assert all(b > a for a, b in zip(node.scored, node.scored[1:], strict=False))


def test_a_restarted_evaluator_does_not_score_the_initial_model_again(tmp_path: Path) -> None:
    node = evaluator(tmp_path, every=3, busy_s={}, version=4)
    asyncio.run(drain(node, [5, 6, 7]))
    assert node.scored == [6]
