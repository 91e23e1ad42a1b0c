"""Reward: any plain function ``score(prompt, response, answer, **row) -> float | dict`` as a node.

Rules: the function runs in worker processes with a deadline per call (``RewardPool``); an
exception, a bad return value, a timeout or a crash scores ``failure_reward`` with the reason as
verdict, is counted (``failed_<reason>``) and logged, and the node keeps working. A dict return
gives ``reward`` plus named metrics, reported by name downstream. Extra columns pass through.
Stateless: a restarted replica starts a fresh pool.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pyarrow as pa
from pydantic import Field, JsonValue

from areal_flow.node import NodeContext, Output, Transform
from areal_flow.roles import RewardSpec
from areal_flow.spec import FunctionRef

FAILURE_LOG_LIMIT = 5  # failures logged in full per replica; the rest are only counted


class RewardFnConfig(RewardSpec):
    """Scores each rollout with a plain Python function."""

    kind: Literal["reward"] = "reward"
    fn: FunctionRef = Field(
        description="The reward function: 'package.module:function', or the function object "
        "itself in a Python graph file. Called as fn(prompt=..., response=..., answer=..., "
        "**other row fields, **params); returns a number or a dict with 'reward', an optional "
        "'verdict' string and named numeric metrics."
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Extra keyword arguments for every call (JSON values); they win a clash "
        "with a row field of the same name.",
    )
    workers: int = Field(2, ge=1, le=256, description="Worker processes per replica.")
    timeout_s: float = Field(5.0, gt=0, le=3600, description="Time limit per call.")
    failure_reward: float = Field(
        0.0, description="Reward of a call that raised, returned no reward, timed out or crashed."
    )
    max_response_chars: int = Field(
        32_768, ge=1, description="Longer responses are not scored: failure_reward, 'too_long'."
    )


@dataclass(frozen=True)
class RewardCall:
    """How a reward node calls its function."""

    fn: str
    params: dict[str, Any]
    workers: int
    timeout_s: float
    failure_reward: float
    max_response_chars: int
    warmup: str | None = None


RewardConfigT = TypeVar("RewardConfigT", bound=RewardSpec, covariant=True)


class RewardNode(Transform[RewardConfigT]):
    """Scores every row of each rollout batch through a ``RewardPool``; a subclass says which
    function with which settings (``reward_call``)."""

    concurrency = 4  # batches scored at once; the pool's workers do the parallel work

    @abstractmethod
    def reward_call(self) -> RewardCall:
        """The function and its settings, from this node's config."""

    def setup(self, ctx: NodeContext) -> None:
        from areal_flow.reward.pool import RewardPool

        super().setup(ctx)
        call = self.reward_call()
        self.pool = RewardPool(
            call.fn,
            call.params,
            workers=call.workers,
            timeout_s=call.timeout_s,
            failure_reward=call.failure_reward,
            max_response_chars=call.max_response_chars,
            warmup=call.warmup,
        ).start()
        self.failures_logged = 0

    async def process(self, batch: pa.RecordBatch) -> Output:
        from areal_flow.reward.records import reward_rows, scored_batch

        assert self.ctx is not None
        results = await self.pool.score(reward_rows(batch))
        for result in results:
            self.ctx.metrics.count(f"verdict_{result.verdict or 'none'}")
            if result.failure is not None:
                self._count_failure(result)
        return scored_batch(batch, results)

    def _count_failure(self, result: Any) -> None:
        assert self.ctx is not None
        self.ctx.metrics.count(f"failed_{result.failure}")
        if self.failures_logged < FAILURE_LOG_LIMIT:
            self.failures_logged += 1
            self.ctx.log.warning(
                "reward %s failed (%s): %s", self.pool.fn, result.failure, result.message
            )

    def teardown(self) -> None:
        if hasattr(self, "pool"):
            self.pool.close()


class RewardFn(RewardNode[RewardFnConfig]):
    """The ``reward`` kind: the function and settings its config names."""

    def reward_call(self) -> RewardCall:
        cfg = self.config
        return RewardCall(
            cfg.fn,
            dict(cfg.params),
            cfg.workers,
            cfg.timeout_s,
            cfg.failure_reward,
            cfg.max_response_chars,
        )
