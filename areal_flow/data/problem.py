"""The unit of prompt data: one math problem with its reference answer, and the prompt wording.

Role: the shared record that every problem source (procedural task, JSONL/Parquet/Arrow file)
produces and that the prompt source node and `areal-flow eval` consume.

Rules:
- ``answer`` is the reference final answer as a string (an integer string for the arithmetic
  task, the ``#### N`` value for GSM8K); the verifier compares against it.
- ``question`` is the bare problem; `prompt_text` adds the answer-format instruction that the
  verifier's default format reward checks ("The answer is N.").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

#: Asks for the format `areal_flow.reward` extracts by default (``required_format="answer_is"``).
ANSWER_INSTRUCTION: Final = "End with 'The answer is N.' where N is the final answer."


@dataclass(frozen=True)
class Problem:
    """One problem: stable id, question text, reference final answer, level (for metrics)."""

    id: str
    question: str
    answer: str
    level: str
    extra: dict[str, Any] = field(default_factory=dict)  # a dataset's own fields, passed along


def prompt_text(question: str, instruction: str = ANSWER_INSTRUCTION) -> str:
    """The user message for ``question``: the problem, then the answer-format instruction."""
    return f"{question}\n{instruction}" if instruction else question
