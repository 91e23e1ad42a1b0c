"""A calculator tool: arithmetic on numbers, evaluated by walking the syntax tree (never ``eval``).

Role: `evaluate` turns an expression such as ``(3 + 4.5) * 2 ** 3 // 7 % 5`` into a number or a
`ToolError`; `Calculator` serves it as a tool (plain-text form ``<calc>expression</calc>``).

Rules:
- Grammar: int and float literals, ``+ - * / // % **``, unary ``+``/``-``, parentheses.
  Anything else (names, calls, attributes, subscripts, strings, comparisons, ``^``) is refused
  with a message saying what was found; nothing is ever looked up or called.
- Every step is bounded before it runs, so no input can hang or exhaust memory: the expression
  length and tree size, integers of at most ``MAX_INT_BITS`` bits (checked *before* a product or
  power is computed, so ``9**9**9`` is refused at once), and float overflow is an error.
- Results: integers print exactly; floats print with 12 significant digits, whole floats as
  integers (``12/4`` gives ``3``).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, ClassVar, Final

from areal_flow.tools.base import Tool, ToolError

MAX_CHARS: Final = 200
MAX_NODES: Final = 100
MAX_INT_BITS: Final = 1024  # about 308 decimal digits

Number = int | float

_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Final[dict[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> Number:
    """The value of ``expression``; `ToolError` with a readable reason when it has none."""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise ToolError("empty expression")
    if len(text) > MAX_CHARS:
        raise ToolError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ToolError(f"not an arithmetic expression ({e.msg})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError(f"expression has more than {MAX_NODES} parts")
    value = _eval(tree.body)
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number")
    return value


def format_number(value: Number) -> str:
    """``3`` for 3 and 3.0, ``0.333333333333`` for 1/3, exact digits for big integers."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        _precheck(node.op, left, right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("number too large") from None
        if isinstance(value, complex):
            raise ToolError("the result is not a real number")
        return _checked(value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("'^' is not a power here; write ** (2 ** 3 = 8)")
    raise ToolError(f"{_describe(node)} is not allowed; use numbers, + - * / // % ** and ( )")


def _precheck(op: ast.operator, left: Number, right: Number) -> None:
    """Refuse an integer product or power whose result would exceed MAX_INT_BITS."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if isinstance(op, ast.Mult) and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        raise ToolError(f"number too large (more than {MAX_INT_BITS} bits)")
    # |left| >= 2**(bits - 1), so the power has at least (bits - 1) * right bits.
    too_big = right > 0 and (abs(left).bit_length() - 1) * right > MAX_INT_BITS
    if isinstance(op, ast.Pow) and too_big:
        raise ToolError(f"number too large (more than {MAX_INT_BITS} bits)")


def _checked(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"number too large (more than {MAX_INT_BITS} bits)")
    return value


def _describe(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr})"
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return f"a {type(node).__name__.lower()} expression"


class Calculator(Tool):
    """Arithmetic as a tool; plain-text form ``<calc>expression</calc>`` by default."""

    name: ClassVar[str] = "calculator"
    description: ClassVar[str] = (
        "Evaluate an arithmetic expression with numbers, + - * / // % ** and parentheses."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "expression": {"type": "string", "description": "For example (3 + 4) * 2 ** 3"}
        },
        "required": ["expression"],
        "additionalProperties": False,
    }

    def __init__(self, *, tag: str | None = "calc", timeout_s: float = 5.0) -> None:
        super().__init__(tag=tag, tag_argument="expression" if tag else None, timeout_s=timeout_s)

    async def call(self, args: dict[str, Any]) -> str:
        return format_number(evaluate(args["expression"]))
