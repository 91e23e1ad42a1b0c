"""The calculator: exact arithmetic, and every unsafe or unbounded input refused with a reason."""

from __future__ import annotations

import asyncio
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from areal_flow.tools import Calculator, ToolError, evaluate
from areal_flow.tools.calculator import MAX_INT_BITS, format_number


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("12 / 4", "3"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("-3 ** 2", "-9"),
        ("(-3) ** 2", "9"),
        ("--5", "5"),
        ("+5 - -5", "10"),
        ("1 / 3", "0.333333333333"),
        ("0.1 + 0.2", "0.3"),
        ("1.5e3 * 2", "3000"),
        ("3 × 4 ÷ 2 − 1", "5"),
        ("2 ** 100", str(2**100)),
        ("  48 / 6  ", "8"),
    ],
)
def test_arithmetic(expression: str, value: str) -> None:
    assert format_number(evaluate(expression)) == value


@given(
    a=st.integers(-(10**6), 10**6),
    b=st.integers(-(10**6), 10**6).filter(bool),
    op=st.sampled_from(["+", "-", "*", "//", "%"]),
)
def test_integer_operations_match_python(a: int, b: int, op: str) -> None:
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    ops |= {"//": operator.floordiv, "%": operator.mod}
    assert evaluate(f"({a}) {op} ({b})") == ops[op](a, b)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "function call"),
        ("x + 1", "the name 'x'"),
        ("(1).real", "attribute access"),
        ("[1, 2][0]", "subscript"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1 < 2", "compare"),
        ("2 ^ 3", "write **"),
        ("lambda: 1", "lambda"),
        ("1; 2", "not an arithmetic expression"),
        ("import os", "not an arithmetic expression"),
        ("", "empty expression"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 2000", "too large"),
        ("2 ** 600 * 2 ** 600", "too large"),
        ("10.0 ** 400", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("1" * 201, "longer than 200"),
        ("+".join(["1"] * 60), "more than 100 parts"),
    ],
)
def test_refusals_say_why(expression: str, reason: str) -> None:
    with pytest.raises(ToolError) as caught:
        evaluate(expression)
    assert reason in str(caught.value)


def test_biggest_allowed_integer_still_evaluates() -> None:
    assert evaluate(f"2 ** {MAX_INT_BITS - 1}") == 2 ** (MAX_INT_BITS - 1)


def test_tool_reports_errors_as_results() -> None:
    calc = Calculator()
    ok = asyncio.run(calc.invoke({"expression": "6 * 7"}))
    assert (ok.name, ok.content, ok.ok) == ("calculator", "42", True)
    bad = asyncio.run(calc.invoke({"expression": "os.system('ls')"}))
    assert not bad.ok and bad.content.startswith("error: ") and "function call" in bad.content
    missing = asyncio.run(calc.invoke({}))
    assert not missing.ok and "'expression' is a required property" in missing.content
    extra = asyncio.run(calc.invoke({"expression": "1", "mode": "x"}))
    assert not extra.ok and "mode" in extra.content
    wrong_type = asyncio.run(calc.invoke({"expression": 5}))
    assert not wrong_type.ok and "invalid expression" in wrong_type.content


def test_tool_schema_is_a_chat_template_function() -> None:
    schema = Calculator().schema()
    assert schema["type"] == "function"
    assert schema["function"]["name"] == "calculator"
    assert schema["function"]["parameters"]["required"] == ["expression"]
