"""Score one response against one reference answer: the verdict and its reward.

Role: the per-answer work the verifier pool runs inside its worker processes. It may also be
called directly, but only from a process's main thread: math-verify arms ``signal.alarm``.

Rules:
- Cheap checks first, in order: response length, answer extraction, span length and nesting
  depth. Only a short, shallow span reaches a math parser.
- Plain numbers on both sides ("1,080", "18 dollars", "-3.5") are compared exactly as decimals;
  everything else goes through math-verify's LaTeX parser (an ANTLR grammar, never ``eval``).
- A plain-number reference needs a number as the answer (``number_answers``, on by default): a
  plain number, or for a non-integer reference one fraction of integers ("3/4", "\\frac{3}{4}").
  An expression that only evaluates to the reference ("The answer is 3 + 3." for "What is
  3 + 3?") restates the question; it is ``not_a_number``, wrong. Policies trained without this
  rule learned to echo the question.
  Its expression parser (sympy ``parse_expr``, built on ``eval``) is deliberately not used.
- ``answer_last`` (off by default, and in every evaluation): an answer that does not end the
  response is ``not_last``, wrong, whatever its value. Prompts that say "End with 'The answer
  is N.'" ask for it; without it a policy is paid for talking on after its answer, and its
  answers drift towards max_tokens (docs/benchmarks.md "The main job").
- Every failure is a verdict, never an exception: ``reason`` says why, and the reward is the
  configured wrong reward (plus the format reward when the format was followed).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from areal_flow.reward.answers import (
    RequiredFormat,
    clean_span,
    ends_response,
    extract_answer,
    follows_format,
)
from areal_flow.reward.answers import plain_number as _plain_number

Reason = Literal[
    "correct",
    "wrong",
    "no_answer",
    "too_long",
    "too_complex",
    "parse_error",
    "not_a_number",
    "not_last",
    "compare_error",
    "timeout",
    "worker_crash",
]
REASONS: Final[tuple[str, ...]] = get_args(Reason)

#: The one non-plain form a non-integer answer may take: a fraction ("3/4", "\\frac{3}{4}").
_FRACTION: Final = re.compile(r"-?\s*(?:\d+\s*/\s*\d+|\\[dt]?frac\s*\{\s*\d+\s*\}\s*\{\s*\d+\s*\})")


class RewardConfig(BaseModel):
    """How answers are extracted and what they earn. AReaL's values: ``RewardConfig.areal()``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    correct_reward: float = Field(1.0, description="Reward of a correct final answer.")
    wrong_reward: float = Field(
        0.0, description="Reward of a wrong, missing, unparsable or timed-out answer."
    )
    format_reward: float = Field(
        0.0, description="Added to the reward when the response follows `required_format`."
    )
    required_format: RequiredFormat = Field(
        "answer_is",
        description="The format the prompt asks for: 'answer_is' ('The answer is N.'), "
        "'boxed' (\\boxed{N}), 'hashes' ('#### N') or 'any' of them.",
    )
    lenient: bool = Field(
        False, description="When no answer marker is present, take the last number in the text."
    )
    number_answers: bool = Field(
        True,
        description="When the reference is a plain number, accept only a number (or a fraction "
        "of integers) as the answer, not an expression that evaluates to it ('3 + 3').",
    )
    answer_last: bool = Field(
        False,
        description="The answer must end the response: text after it (the model talking on) "
        "makes the answer wrong, reason 'not_last'. For training rewards whose prompt says "
        "where the answer goes.",
    )
    max_response_chars: int = Field(
        32_768, gt=0, description="Longer responses are wrong with reason 'too_long', unread."
    )
    max_answer_chars: int = Field(
        128, gt=0, description="Longer extracted answers are wrong with reason 'too_long'."
    )
    max_nesting: int = Field(
        8, gt=0, description="Deeper bracket nesting in an answer is wrong ('too_complex')."
    )
    parse_timeout_s: int = Field(
        1, gt=0, description="math-verify's own alarm per parse and per comparison (seconds)."
    )

    @classmethod
    def areal(cls, **overrides: Any) -> RewardConfig:
        """AReaL's reward scale: +5 for a correct answer, -5 otherwise."""
        return cls(**{"correct_reward": 5.0, "wrong_reward": -5.0, **overrides})


@dataclass(frozen=True)
class Verdict:
    """The outcome of scoring one response."""

    reward: float
    correct: bool
    format_ok: bool
    reason: Reason
    extracted: str | None  # the answer span as found in the response (after cleaning)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_verdict(
    config: RewardConfig, reason: Reason, format_ok: bool, extracted: str | None
) -> Verdict:
    """A verdict whose reward follows from the reason and the format flag."""
    correct = reason == "correct"
    reward = config.correct_reward if correct else config.wrong_reward
    if format_ok:
        reward += config.format_reward
    return Verdict(float(reward), correct, format_ok, reason, extracted)


def score_answer(response: str, reference: str, config: RewardConfig) -> Verdict:
    """The verdict for ``response`` given the reference final answer. Main thread only."""
    if len(response) > config.max_response_chars:
        return make_verdict(config, "too_long", False, None)
    format_ok = follows_format(response, config.required_format)
    found = extract_answer(response, lenient=config.lenient)
    if found is None:
        return make_verdict(config, "no_answer", format_ok, None)
    if found.problem == "unbalanced":
        return make_verdict(config, "parse_error", format_ok, found.text[: config.max_answer_chars])
    span = clean_span(found.text)
    if found.problem == "too_long" or len(span) > config.max_answer_chars:
        return make_verdict(config, "too_long", format_ok, span[: config.max_answer_chars])
    if not span:
        return make_verdict(config, "no_answer", format_ok, None)
    if nesting_depth(span) > config.max_nesting:
        return make_verdict(config, "too_complex", format_ok, span)
    if config.answer_last and not ends_response(response, found):
        return make_verdict(config, "not_last", format_ok, span)
    return make_verdict(config, compare(span, reference, config), format_ok, span)


def compare(span: str, reference: str, config: RewardConfig) -> Reason:
    """Whether the cleaned answer span equals the reference: exact for numbers, else math-verify."""
    pred_number, gold_number = _plain_number(span), _plain_number(reference)
    if pred_number is not None and gold_number is not None:
        return "correct" if Decimal(pred_number) == Decimal(gold_number) else "wrong"
    # An integer takes no fraction either: "12/2" for "What is 12 divided by 2?" is an echo.
    fraction_ok = gold_number is not None and "." in gold_number and _FRACTION.fullmatch(span)
    if config.number_answers and gold_number is not None and not fraction_ok:
        return "not_a_number"
    return _compare_with_math_verify(span, reference.strip(), config.parse_timeout_s)


def nesting_depth(span: str) -> int:
    """Deepest nesting of (), [] and {} in ``span`` (mismatched kinds count alike)."""
    depth = deepest = 0
    for ch in span:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _compare_with_math_verify(span: str, reference: str, timeout_s: int) -> Reason:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        gold = _parse_latex(reference, timeout_s)
        pred = _parse_latex(span, timeout_s)
    except TimeoutException:
        return "timeout"
    except Exception:  # any parser failure on model text is a verdict, not a crash
        logging.getLogger(__name__).debug("unparsable answer %r", span[:80], exc_info=True)
        return "parse_error"
    if not gold or not pred:
        return "parse_error"
    try:
        same = verify(gold, pred, timeout_seconds=timeout_s, raise_on_error=True)
    except TimeoutException:
        return "timeout"
    except Exception:  # sympy may raise anything on odd expressions
        logging.getLogger(__name__).debug("comparison failed for %r", span[:80], exc_info=True)
        return "compare_error"
    return "correct" if same else "wrong"


@lru_cache(maxsize=4096)
def _parse_latex_cached(text: str, timeout_s: int) -> tuple[Any, ...]:
    from math_verify import LatexExtractionConfig, parse

    # A span is already the answer; wrapping it in $...$ makes the LaTeX extractor take all of it.
    found = parse(
        f"${text}$",
        [LatexExtractionConfig(boxed_match_priority=-1)],
        parsing_timeout=timeout_s,
        raise_on_error=True,
    )
    return tuple(found)


def _parse_latex(text: str, timeout_s: int) -> list[Any]:
    return list(_parse_latex_cached(text.replace("\\$", "").replace("$", ""), timeout_s))
