"""The procedural arithmetic task: determinism, correct answers, levels, held-out disjointness."""

from __future__ import annotations

import operator
import re
from collections import Counter

import pytest

from areal_flow.data import DEFAULT_MIX, LEVELS, ArithmeticTask, prompt_text
from areal_flow.data.arithmetic import canonical_key, split_of

ALL_LEVELS = {name: 1.0 for name in LEVELS}
_OPS = {"+": operator.add, "-": operator.sub, "×": operator.mul}


def _evaluate_plain(question: str) -> int:
    """The value of 'What is a op b op c?' computed left to right (no eval)."""
    tokens = re.fullmatch(r"What is (.*)\?", question)
    assert tokens is not None, question
    parts = tokens.group(1).split(" ")
    value = int(parts[0])
    for symbol, number in zip(parts[1::2], parts[2::2], strict=True):
        value = _OPS[symbol](value, int(number))
    return value


def test_items_are_deterministic_in_seed_split_and_index() -> None:
    a, b = ArithmeticTask(seed=3), ArithmeticTask(seed=3)
    assert [a.item("train", i) for i in range(50)] == [b.item("train", i) for i in range(50)]
    assert a.item("train", 7) != a.item("test", 7)
    other_seed = [ArithmeticTask(seed=4).item("train", i).question for i in range(50)]
    assert other_seed != [a.item("train", i).question for i in range(50)]
    # reading out of order gives the same items
    assert a.item("test", 123) == ArithmeticTask(seed=3).dataset("test", 200)[123]


def test_plain_answers_are_right_and_non_negative_integers() -> None:
    task = ArithmeticTask(seed=1, mix=ALL_LEVELS)
    seen = Counter()
    for i in range(2000):
        problem = task.item("train", i)
        seen[problem.level] += 1
        assert re.fullmatch(r"\d+", problem.answer), problem
        if problem.question.startswith("What is"):
            assert _evaluate_plain(problem.question) == int(problem.answer), problem
    assert set(seen) == set(LEVELS)


def test_word_problems_state_their_numbers_and_answers() -> None:
    task = ArithmeticTask(seed=2, mix={"word1": 1.0, "word2": 1.0})
    for i in range(300):
        problem = task.item("train", i)
        numbers = [int(n) for n in re.findall(r"\d+", problem.question)]
        value = int(problem.answer)
        if problem.level == "word1":
            a, b = numbers
            assert value in (a + b, a - b, a * b), problem
        else:
            a, b, c = numbers
            assert value in (a + b - c, a * b + c), problem


def test_easy_levels_are_small() -> None:
    task = ArithmeticTask(seed=0, mix={"add1": 1.0, "sub1": 1.0})
    values = [int(task.item("train", i).answer) for i in range(500)]
    assert max(values) <= 18
    assert min(values) >= 0


def test_default_mix_is_mostly_one_digit_levels() -> None:
    task = ArithmeticTask(seed=0)
    levels = Counter(task.item("train", i).level for i in range(3000))
    assert set(levels) == set(DEFAULT_MIX)
    easy = levels["add1"] + levels["sub1"] + levels["word1"]
    assert easy / 3000 > 0.55


def test_heldout_split_never_shares_a_computation_with_training() -> None:
    task = ArithmeticTask(seed=0, mix=ALL_LEVELS, heldout_fraction=0.2)
    train = {task.keyed_item("train", i)[1] for i in range(6000)}
    test = {task.keyed_item("test", i)[1] for i in range(3000)}
    assert train and test
    assert not train & test
    # the split of a computation does not depend on the seed: another seed's test set is
    # disjoint from this seed's training set too
    other = ArithmeticTask(seed=99, mix=ALL_LEVELS, heldout_fraction=0.2)
    assert not {other.keyed_item("test", i)[1] for i in range(3000)} & train
    # commutative forms share a key, so "3 + 4" in training forbids "4 + 3" in test
    assert canonical_key("add", [3, 4]) == canonical_key("add", [4, 3])
    assert canonical_key("sub", [7, 2]) != canonical_key("sub", [2, 7])


def test_heldout_fraction_sets_the_share_of_problems() -> None:
    keys = [canonical_key("add", [a, b]) for a in range(100) for b in range(a, 100)]
    share = sum(split_of(k, 0.2) == "test" for k in keys) / len(keys)
    assert 0.17 < share < 0.23


def test_prompt_asks_for_the_verifier_format() -> None:
    problem = ArithmeticTask().item("train", 0)
    text = prompt_text(problem.question)
    assert text.startswith(problem.question)
    assert "The answer is N." in text


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown arithmetic levels"):
        ArithmeticTask(mix={"add9": 1.0})
    with pytest.raises(ValueError, match="heldout_fraction"):
        ArithmeticTask(heldout_fraction=0.0)
    with pytest.raises(ValueError, match="split"):
        ArithmeticTask().item("validation", 0)  # type: ignore[arg-type]


def test_multi_step_problems_need_two_computations_over_big_numbers() -> None:
    """The tool-use levels: the stated numbers give the answer only through two operations."""
    task = ArithmeticTask(seed=5, mix={"boxes_shared": 1, "boxes_sold": 1, "two_orders": 1})
    for i in range(300):
        problem = task.item("train", i)
        numbers = [int(n) for n in re.findall(r"\d+", problem.question)]
        value = int(problem.answer)
        if problem.level == "boxes_shared":
            a, b, c = numbers
            assert a * b == value * c and a >= 10 and b >= 10, problem
        elif problem.level == "boxes_sold":
            a, b, c = numbers
            assert a * b - c == value > 0 and c >= 100, problem
        else:
            a, b, c, d = numbers
            assert a * b + c * d == value >= 242, problem
