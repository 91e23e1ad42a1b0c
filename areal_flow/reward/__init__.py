"""Reward for math answers: extract the final answer, verify it, score it.

- `answers`: find the final answer in a response (pure text).
- `scoring`: `RewardConfig`, `Verdict`, `score_answer` (one answer, in-process, main thread).
- `verifier`: `VerifierPool`, worker processes with per-answer deadlines (async and sync).
"""

from areal_flow.reward.answers import Extraction, extract_answer, follows_format
from areal_flow.reward.scoring import REASONS, Reason, RewardConfig, Verdict, score_answer
from areal_flow.reward.verifier import PoolStats, VerifierError, VerifierPool

__all__ = [
    "REASONS",
    "Extraction",
    "PoolStats",
    "Reason",
    "RewardConfig",
    "Verdict",
    "VerifierError",
    "VerifierPool",
    "extract_answer",
    "follows_format",
    "score_answer",
]
