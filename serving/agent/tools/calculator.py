"""``calculator``: arithmetic on numbers with + - * / // % **, parentheses and unary minus.

No ``eval``: the expression is parsed with ``ast`` and only an allow-list of node types is walked. Exponents and
results are bounded so one call cannot eat the worker's memory or CPU.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from .base import Arguments, Tool, ToolError

MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _check_tree(node: ast.AST) -> None:
    """Raise ValueError at the first node outside the allow-list."""
    if isinstance(node, ast.Expression):
        _check_tree(node.body)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check_tree(node.left)
        _check_tree(node.right)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check_tree(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        pass
    else:
        raise ValueError(f"unsupported element {type(node).__name__!r} (numbers, + - * / // % **, parentheses)")


def parse_expression(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression ({e.msg})") from None
    _check_tree(tree)
    return tree


def _bounded(x: int | float) -> int | float:
    if (isinstance(x, float) and not math.isfinite(x)) or abs(x) > MAX_MAGNITUDE:
        raise ToolError(f"result too large (limit {MAX_MAGNITUDE:g})")
    return x


def _power(base: int | float, exp: int | float) -> int | float:
    if abs(exp) > MAX_EXPONENT:
        raise ToolError(f"exponent {exp:g} too large (limit {MAX_EXPONENT})")
    if base != 0 and abs(base) != 1 and exp > 0 and exp * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ToolError(f"result too large (limit {MAX_MAGNITUDE:g})")
    if base == 0 and exp < 0:
        raise ToolError("division by zero (0 to a negative power)")
    result = base**exp
    if isinstance(result, complex):
        raise ToolError("negative number to a fractional power has no real result")
    return result


def evaluate(node: ast.AST) -> int | float:
    """Evaluate a tree that passed ``_check_tree``."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp):
        return _bounded(_UNARY[type(node.op)](evaluate(node.operand)))
    if isinstance(node, ast.BinOp):
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right))
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ToolError("division by zero")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except OverflowError:
            raise ToolError(f"result too large (limit {MAX_MAGNITUDE:g})") from None
    raise ToolError(f"unsupported element {type(node).__name__!r}")


def format_number(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x) if isinstance(x, float) else str(x)


class CalculatorArguments(Arguments):
    expression: str = Field(min_length=1, max_length=200)
    """Arithmetic expression, e.g. ``(2 + 3) * -4 ** 2``."""

    @field_validator("expression")
    @classmethod
    def _arithmetic_only(cls, v: str) -> str:
        parse_expression(v)
        return v


class Calculator(Tool[CalculatorArguments]):
    name = "calculator"
    description = "Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses, unary minus."
    arguments = CalculatorArguments
    timeout_s = 2.0

    async def run(self, args: CalculatorArguments) -> str:
        return format_number(evaluate(parse_expression(args.expression)))
