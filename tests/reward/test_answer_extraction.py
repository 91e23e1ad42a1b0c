"""Final-answer extraction: every marker, precedence, cleaning, number normalisation."""

from __future__ import annotations

import time

import pytest

from areal_flow.reward.answers import (
    SPAN_LIMIT,
    clean_span,
    ends_response,
    extract_answer,
    follows_format,
    plain_number,
)


@pytest.mark.parametrize(
    ("text", "span", "source"),
    [
        ("3 + 4 = 7. The answer is 7.", "7", "answer_is"),
        ("The final answer is 12", "12", "answer_is"),
        ("the answer is: 3.5. Done.", "3.5", "answer_is"),
        ("So the answer is $\\frac{1}{2}$.\nThanks", "$\\frac{1}{2}$", "answer_is"),
        ("We get \\boxed{\\frac{3}{4}} in the end", "\\frac{3}{4}", "boxed"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", "boxed"),
        ("work\n#### 1,080", "1,080", "hashes"),
        ("The answer is 7! Great.", "7", "answer_is"),
    ],
)
def test_strict_markers(text: str, span: str, source: str) -> None:
    found = extract_answer(text)
    assert found is not None
    assert (found.text, found.source, found.problem) == (span, source, None)


def test_the_last_marker_wins_whatever_its_kind() -> None:
    found = extract_answer("The answer is 5.\nOn reflection, \\boxed{6}")
    assert found is not None and (found.source, found.text) == ("boxed", "6")
    found = extract_answer("\\boxed{6} hmm, no. The answer is 5.")
    assert found is not None and (found.source, found.text) == ("answer_is", "5")
    found = extract_answer("The answer is 1. The answer is 2.")
    assert found is not None and found.text == "2"


def test_last_number_only_when_lenient_and_no_marker() -> None:
    text = "3 plus 4 makes 7 apples"
    assert extract_answer(text) is None
    found = extract_answer(text, lenient=True)
    assert found is not None and (found.text, found.source) == ("7", "last_number")
    found = extract_answer("It is 12, not 1,080.5 or −3", lenient=True)
    assert found is not None and found.text == "-3"
    found = extract_answer("The answer is 9. Also 10 and 11.", lenient=True)
    assert found is not None and found.text == "9"  # a marker beats the last number


@pytest.mark.parametrize(
    ("text", "last"),
    [
        ("3 + 4 = 7. The answer is 7.", True),
        ("The answer is **7**.\n", True),
        ("So $\\boxed{7}$.", True),
        ("work\n#### 7\n", True),
        ("The answer is 7", True),
        ("The answer is 7.\n\nThis is a classic example of", False),
        ("The answer is 7. So 3 + 4 = 7", False),
        ("\\boxed{7} because 3 + 4 = 7.", False),
        ("#### 7\nDone", False),
    ],
)
def test_ends_response_allows_only_closing_decoration_after_the_answer(
    text: str, last: bool
) -> None:
    found = extract_answer(text)
    assert found is not None and clean_span(found.text) == "7"
    assert ends_response(text, found) is last
    numbers = "3 plus 4 makes 7 apples", "3 plus 4 makes 7."
    assert [ends_response(t, extract_answer(t, lenient=True)) for t in numbers] == [False, True]


def test_unbalanced_and_overlong_spans_are_flagged() -> None:
    unbalanced = extract_answer("\\boxed{\\frac{1}{2}")
    assert unbalanced is not None and unbalanced.problem == "unbalanced"
    long_box = extract_answer("\\boxed{" + "1" * (SPAN_LIMIT + 50) + "}")
    assert long_box is not None and long_box.problem == "too_long"
    assert len(long_box.text) <= SPAN_LIMIT + 1
    long_sentence = extract_answer("The answer is " + "x" * (SPAN_LIMIT + 50))
    assert long_sentence is not None and long_sentence.problem == "too_long"


def test_clean_span_removes_decoration_and_keeps_the_stated_value() -> None:
    assert clean_span("**$42$**.") == "42"
    assert clean_span("\\(\\dfrac{3}{4}\\)") == "\\dfrac{3}{4}"
    assert clean_span("x = 8") == "8"
    assert clean_span("5 + 3 = 8") == "8"
    assert clean_span("−7") == "-7"
    assert clean_span("10!") == "10!"  # factorial is math, not punctuation


@pytest.mark.parametrize(
    ("span", "number"),
    [
        ("1,080", "1080"),
        ("-3.50", "-3.50"),
        ("18 dollars", "18"),
        ("\\$18", "18"),
        ("$18 per day", "18"),
        ("50%", "50"),
        ("1,2", None),  # malformed grouping is not twelve
        ("3/4", None),
        ("5 apples and 3 pears", None),
        ("x", None),
    ],
)
def test_plain_number(span: str, number: str | None) -> None:
    assert plain_number(span) == number


def test_follows_format_checks_the_required_marker() -> None:
    text = "Work. The answer is 7."
    assert follows_format(text, "answer_is")
    assert not follows_format(text, "boxed")
    assert follows_format(text, "any")
    assert follows_format("\\boxed{7}", "boxed")
    assert not follows_format("\\boxed{7", "boxed")  # unbalanced is not the format
    assert not follows_format("The answer is .", "answer_is")  # empty answer
    assert follows_format("#### 7", "hashes")
    assert not follows_format("7", "any")


def test_extraction_is_linear_on_adversarial_text() -> None:
    texts = [
        "the " * 100_000,
        "\\boxed{" * 50_000,
        "{" * 300_000,
        "1," * 200_000,
        "The answer is " * 20_000,
        "#### " * 50_000,
        "9" * 500_000,
    ]
    start = time.perf_counter()
    for text in texts:
        extract_answer(text, lenient=True)
        follows_format(text, "any")
    assert time.perf_counter() - start < 5.0
