"""Reward for math answers: extract the final answer, verify it, score it.

- `answers`: find the final answer in a response (pure text).
- `scoring`: `RewardConfig`, `Verdict`, `score_answer` (one answer, in-process, main thread).
- `verifier`: `VerifierPool`, worker processes with per-answer deadlines (async and sync).
- `code`: `code_reward`, a code answer run against its tests in the sandbox.
"""

from areal_flow.reward.answers import Extraction, extract_answer, follows_format
from areal_flow.reward.code import CodeRewardConfig, CodeVerdict, code_reward, code_reward_async
from areal_flow.reward.scoring import REASONS, Reason, RewardConfig, Verdict, score_answer
from areal_flow.reward.verifier import PoolStats, VerifierError, VerifierPool

__all__ = [
    "REASONS",
    "CodeRewardConfig",
    "CodeVerdict",
    "Extraction",
    "PoolStats",
    "Reason",
    "RewardConfig",
    "Verdict",
    "VerifierError",
    "VerifierPool",
    "code_reward",
    "code_reward_async",
    "extract_answer",
    "follows_format",
    "score_answer",
]
