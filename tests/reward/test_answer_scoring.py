"""Scoring one answer in-process: verdict reasons, reward values, the math-verify path."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.reward import REASONS, RewardConfig, score_answer
from areal_flow.reward.scoring import nesting_depth


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        ("The answer is 7.", "7"),
        ("#### 1,080", "1080"),
        ("The answer is $1,080.00$.", "1080"),
        ("The answer is 18 dollars.", "18"),
        ("The answer is x = 8.", "8"),
        ("The answer is \\(\\dfrac{1}{2}\\).", "0.5"),
        ("So \\boxed{\\frac{6}{8}}", "\\frac{3}{4}"),
        ("The answer is \\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("The answer is -3.", "-3"),
    ],
)
def test_equivalent_answers_are_correct(response: str, reference: str) -> None:
    verdict = score_answer(response, reference, RewardConfig())
    assert verdict.correct, verdict
    assert verdict.reason == "correct"


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        ("The answer is 8.", "7"),
        ("The answer is 7.5.", "7"),
        ("So \\boxed{\\frac{2}{3}}", "\\frac{3}{4}"),
        ("The answer is 1,2.", "12"),
    ],
)
def test_different_answers_are_wrong(response: str, reference: str) -> None:
    verdict = score_answer(response, reference, RewardConfig())
    assert not verdict.correct
    assert verdict.reason in ("wrong", "parse_error", "not_a_number")


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        ("The answer is 3 + 3.", "6"),
        ("The answer is 6 × 7.", "42"),
        ("The answer is \\boxed{2 \\cdot 3}", "6"),
        ("The answer is 12/2.", "6"),
    ],
)
def test_an_expression_is_not_a_number_answer(response: str, reference: str) -> None:
    """'What is 3 + 3?' answered 'The answer is 3 + 3.' echoes the question: wrong, though it
    evaluates to the reference. A policy learned exactly this echo before the rule existed."""
    verdict = score_answer(response, reference, RewardConfig())
    assert (verdict.correct, verdict.reason) == (False, "not_a_number"), verdict
    evaluated = score_answer(response, reference, RewardConfig(number_answers=False))
    assert evaluated.correct, evaluated


def test_number_forms_a_number_answer_may_take() -> None:
    config = RewardConfig()
    assert score_answer("The answer is 3 + 3 = 6.", "6", config).correct  # the stated value
    for fraction in ("The answer is 1/2.", "The answer is 2/4.", "\\boxed{\\frac{1}{2}}"):
        assert score_answer(fraction, "0.5", config).correct, fraction


def test_reward_values_follow_the_config() -> None:
    plain = RewardConfig()
    assert score_answer("The answer is 7.", "7", plain).reward == 1.0
    assert score_answer("The answer is 6.", "7", plain).reward == 0.0
    areal = RewardConfig.areal()
    assert score_answer("The answer is 7.", "7", areal).reward == 5.0
    assert score_answer("The answer is 6.", "7", areal).reward == -5.0
    assert score_answer("no idea", "7", areal).reward == -5.0
    shaped = RewardConfig(correct_reward=1.0, wrong_reward=0.0, format_reward=0.25)
    assert score_answer("The answer is 7.", "7", shaped).reward == 1.25
    assert score_answer("The answer is 6.", "7", shaped).reward == 0.25
    assert score_answer("\\boxed{7}", "7", shaped).reward == 1.0  # right, but not the format
    assert score_answer("it is 7", "7", shaped).reward == 0.0


def test_format_flag_and_lenient_mode() -> None:
    strict = RewardConfig()
    verdict = score_answer("3 plus 4 is 7", "7", strict)
    assert (verdict.correct, verdict.format_ok, verdict.reason) == (False, False, "no_answer")
    lenient = RewardConfig(lenient=True)
    verdict = score_answer("3 plus 4 is 7", "7", lenient)
    assert (verdict.correct, verdict.format_ok, verdict.extracted) == (True, False, "7")
    boxed = RewardConfig(required_format="boxed")
    assert score_answer("\\boxed{7}", "7", boxed).format_ok
    assert not score_answer("The answer is 7.", "7", boxed).format_ok


def test_guard_reasons() -> None:
    config = RewardConfig(max_response_chars=1000, max_answer_chars=20, max_nesting=4)
    assert score_answer("x" * 1001, "1", config).reason == "too_long"
    assert score_answer("The answer is " + "1" * 30 + ".", "1", config).reason == "too_long"
    assert score_answer("\\boxed{((((((1))))))}", "1", config).reason == "too_complex"
    assert score_answer("\\boxed{\\frac{1}{2}", "1", config).reason == "parse_error"
    assert score_answer("nothing here", "1", config).reason == "no_answer"
    assert nesting_depth("\\frac{\\sqrt{(2)}}{3}") == 3


def test_math_verify_timeout_is_a_verdict() -> None:
    # number_answers off: the expression must reach the parser, not stop at the number rule.
    config = RewardConfig(parse_timeout_s=1, number_answers=False)
    verdict = score_answer("\\boxed{10^{10^{10}}}", "5", config)
    assert verdict.reason == "timeout"
    assert not verdict.correct
    assert verdict.reason in REASONS


def test_model_text_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f"The answer is __import__('os').system('touch {marker}').",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"The answer is exec(\"open('{marker}', 'w')\").",
        f"The answer is eval(\"open('{marker}', 'w')\").",
    ]
    for payload in payloads:
        verdict = score_answer(payload, "0", RewardConfig(number_answers=False))
        assert not verdict.correct
    assert not marker.exists()


def test_answer_last_makes_an_answer_followed_by_more_talk_wrong() -> None:
    rambling = "3 + 4 = 7.\n\nThe answer is 7.\n\nThis is a classic example of addition"
    ending = "3 + 4 = 7.\n\nThe answer is 7."
    strict = RewardConfig(answer_last=True, correct_reward=1.0, wrong_reward=-1.0)
    verdict = score_answer(rambling, "7", strict)
    assert (verdict.reason, verdict.correct, verdict.reward) == ("not_last", False, -1.0)
    assert verdict.format_ok and verdict.extracted == "7"  # found, just not last
    assert score_answer(ending, "7", strict).reason == "correct"
    assert score_answer(rambling, "7", RewardConfig()).reason == "correct"  # off by default
    assert score_answer("The answer is 8.", "7", strict).reason == "wrong"
