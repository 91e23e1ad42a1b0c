"""Math verifier: the reward function ``areal_flow.reward.math_reward:score`` with typed settings.

Rules: one reward node among others (``RewardFn``): math-verify in worker processes (it uses
signal.alarm), every answer gets a verdict in bounded time, model output is never evaluated as
code. Metrics ``correct`` and ``format_ok`` report accuracy and format rate by name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from areal_flow.nodes.reward_fn import RewardCall, RewardNode
from areal_flow.roles import RewardSpec


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
    reward_wrong: float = Field(
        0.0, description="Reward of a wrong, missing or timed-out answer (AReaL: -5)."
    )
    format_reward: float = Field(
        0.0, description="Added when the answer follows the required format; 0 = off."
    )
    required_format: Literal["answer_is", "boxed", "hashes", "any"] = Field(
        "answer_is",
        description="The format the prompt asks for: 'The answer is N.', \\boxed{N}, '#### N'.",
    )
    answer_last: bool = Field(
        False,
        description="The answer must end the response: a response that talks on after its "
        "answer earns the wrong reward (verdict 'not_last'). Held-out evaluation ignores it.",
    )


class MathVerifier(RewardNode[MathVerifierConfig]):
    """Appends reward, verdict and the ``correct``/``format_ok`` metrics to each rollout."""

    def reward_call(self) -> RewardCall:
        from areal_flow.reward.math_reward import SCORE, WARM_UP
        from areal_flow.reward.scoring import RewardConfig

        cfg = self.config
        reward = RewardConfig(
            correct_reward=cfg.reward_correct,
            wrong_reward=cfg.reward_wrong,
            format_reward=cfg.format_reward,
            required_format=cfg.required_format,
            lenient=cfg.extraction == "lenient",
            answer_last=cfg.answer_last,
        )
        return RewardCall(
            SCORE,
            reward.model_dump(),
            cfg.workers,
            cfg.timeout_s,
            cfg.reward_wrong,
            reward.max_response_chars,
            WARM_UP,
        )
