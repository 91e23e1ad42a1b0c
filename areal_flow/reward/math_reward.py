"""The math verifier as a reward function: ``score(prompt, response, answer, **row)``.

Role: one reward function among others (``RewardPool`` runs it in worker processes with
deadlines; ``areal_flow.nodes.math_verifier`` and `areal-flow eval` use it). The keyword
arguments beyond the row are a ``RewardConfig`` as a dict (the pool's ``params``).

Rules:
- The reward, the verdict (``scoring.Reason``) and two metrics: ``correct`` and ``format_ok``
  (1 or 0), which every run reports by name (accuracy and format rate).
- Main thread of a process only (math-verify arms ``signal.alarm``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from areal_flow.reward.scoring import RewardConfig, score_answer

SCORE = "areal_flow.reward.math_reward:score"
WARM_UP = "areal_flow.reward.math_reward:warm_up"


def score(prompt: str, response: str, answer: str, **row: Any) -> dict[str, Any]:
    """The verifier's verdict on ``response`` against the reference ``answer``."""
    config = _config(tuple(sorted((k, v) for k, v in row.items() if k in _CONFIG_FIELDS)))
    verdict = score_answer(response, answer, config)
    return {
        "reward": verdict.reward,
        "verdict": verdict.reason,
        "correct": verdict.correct,
        "format_ok": verdict.format_ok,
    }


def warm_up() -> None:
    """The first math-verify call imports sympy and builds the LaTeX parser (~0.5 s)."""
    score_answer("\\boxed{\\frac{1}{2}}", "0.5", RewardConfig())


_CONFIG_FIELDS = frozenset(RewardConfig.model_fields)


@lru_cache(maxsize=16)
def _config(items: tuple[tuple[str, Any], ...]) -> RewardConfig:
    return RewardConfig.model_validate(dict(items))


def math_pool(config: RewardConfig | None = None, **pool: Any) -> Any:
    """A ``RewardPool`` running ``score`` with ``config`` (keyword arguments: the pool's)."""
    from areal_flow.reward.pool import RewardPool

    config = config or RewardConfig()
    return RewardPool(
        SCORE,
        config.model_dump(),
        max_response_chars=config.max_response_chars,
        failure_reward=config.wrong_reward,
        warmup=WARM_UP,
        **pool,
    )
