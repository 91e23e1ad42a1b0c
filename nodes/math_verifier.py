"""Math verifier: scores each rollout's final answer against the reference with math-verify.

Rules: runs math-verify in worker processes (it uses signal.alarm); every answer gets a verdict
in bounded time; model output is never evaluated as code.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from areal_flow.spec import NodeSpec, Port, Resources, light_resources


class MathVerifierConfig(NodeSpec):
    """Reward from answer correctness (+ an optional format reward)."""

    inputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}
    outputs: ClassVar[dict[str, Port]] = {"scored": Port(record="scored")}
    role: ClassVar[str] = "reward"
    stateless: ClassVar[bool] = True

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
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")
