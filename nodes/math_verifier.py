"""Math verifier: scores each rollout's final answer against the reference with math-verify.

Rules: runs math-verify in worker processes (it uses signal.alarm); every answer gets a verdict
in bounded time; model output is never evaluated as code.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from areal_flow.node import NodeContext, Output, Transform
from areal_flow.roles import RewardSpec
from areal_flow.schema import SCHEMAS


class MathVerifierConfig(RewardSpec):
    """Reward from answer correctness (+ an optional format reward)."""

    kind: Literal["math_verifier"] = "math_verifier"
    workers: int = Field(2, ge=1, le=256, description="Verifier worker processes per replica.")
    timeout_s: float = Field(5.0, gt=0, le=600, description="Time limit per answer.")
    extraction: Literal["strict", "lenient"] = Field(
        "strict",
        description="'strict': \\boxed{}, 'The answer is N', '#### N'; 'lenient': + last number.",
    )
    reward_correct: float = Field(1.0, description="Reward of a correct answer (AReaL: 5).")
    reward_wrong: float = Field(0.0, description="Reward of a wrong or missing answer (AReaL: -5).")
    format_reward: float = Field(
        0.0, description="Added when the answer follows the required format; 0 = off."
    )
    required_format: Literal["answer_is", "boxed", "hashes", "any"] = Field(
        "answer_is",
        description="The format the prompt asks for: 'The answer is N.', \\boxed{N}, '#### N'.",
    )


class MathVerifier(Transform[MathVerifierConfig]):
    """Appends reward, correct, format_ok and verdict to each rollout batch."""

    concurrency = 4  # batches scored at once; the pool's workers do the parallel work

    def setup(self, ctx: NodeContext) -> None:
        from areal_flow.reward import RewardConfig, VerifierPool

        super().setup(ctx)
        cfg = self.config
        reward = RewardConfig(
            correct_reward=cfg.reward_correct,
            wrong_reward=cfg.reward_wrong,
            format_reward=cfg.format_reward,
            required_format=cfg.required_format,
            lenient=cfg.extraction == "lenient",
        )
        self.pool = VerifierPool(reward, workers=cfg.workers, timeout_s=cfg.timeout_s).start()

    async def process(self, batch: pa.RecordBatch) -> Output:
        assert self.ctx is not None
        pairs = zip(
            batch.column("response").to_pylist(), batch.column("answer").to_pylist(), strict=True
        )
        verdicts = await self.pool.score(pairs)
        for verdict in verdicts:
            self.ctx.metrics.count(f"verdict_{verdict.reason}")
        return scored_batch(batch, verdicts)

    def teardown(self) -> None:
        if hasattr(self, "pool"):
            self.pool.close()


def scored_batch(batch: pa.RecordBatch, verdicts: list[Any]) -> pa.RecordBatch:
    """``batch`` (rollout records) with the verdict columns appended, as a scored batch."""
    columns = {name: batch.column(name) for name in SCHEMAS["rollout"].names}
    columns["reward"] = pa.array([v.reward for v in verdicts], pa.float32())
    columns["correct"] = pa.array([v.correct for v in verdicts], pa.bool_())
    columns["format_ok"] = pa.array([v.format_ok for v in verdicts], pa.bool_())
    columns["verdict"] = pa.array([v.reason for v in verdicts], pa.string())
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMAS["scored"])
