"""Rewards: reward functions run in worker processes, and the built-in ones.

- `pool`: `RewardPool`, worker processes calling any reward function ``module:name`` with
  per-call deadlines and counted failures (async and sync).
- `math_reward`: the math verifier as a reward function (`score`), and `math_pool`.
- `answers`: find the final answer in a response (pure text).
- `scoring`: `RewardConfig`, `Verdict`, `score_answer` (one answer, in-process, main thread).
- `code`: `code_reward`, a code answer run against its tests in the sandbox.
"""

from areal_flow.reward.answers import Extraction, extract_answer, follows_format
from areal_flow.reward.code import CodeRewardConfig, CodeVerdict, code_reward, code_reward_async
from areal_flow.reward.math_reward import math_pool
from areal_flow.reward.pool import FAILURES, PoolStats, RewardPool, RewardPoolError, RewardResult
from areal_flow.reward.scoring import REASONS, Reason, RewardConfig, Verdict, score_answer

__all__ = [
    "FAILURES",
    "REASONS",
    "CodeRewardConfig",
    "CodeVerdict",
    "Extraction",
    "PoolStats",
    "Reason",
    "RewardConfig",
    "RewardPool",
    "RewardPoolError",
    "RewardResult",
    "Verdict",
    "code_reward",
    "code_reward_async",
    "extract_answer",
    "follows_format",
    "math_pool",
    "score_answer",
]
