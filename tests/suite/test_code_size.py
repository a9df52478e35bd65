"""No function of the components that hold the session code (``serving/``, ``operator/``, ``model/``) is over
cyclomatic complexity 20 (radon's grade D and worse) or over 80 lines: a function that grows past either is
split before it lands."""

from __future__ import annotations

import ast
from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("serving", "operator", "model")
MAX_COMPLEXITY = 20
MAX_LINES = 80


def sources() -> list[Path]:
    return sorted(p for c in COMPONENTS for p in (ROOT / c).rglob("*.py"))


def test_the_components_have_sources() -> None:
    assert {p.relative_to(ROOT).parts[0] for p in sources()} == set(COMPONENTS)


def test_no_function_above_complexity_20() -> None:
    over = [
        f"{p.relative_to(ROOT)}:{b.lineno} {b.name} ({b.complexity})"
        for p in sources()
        for b in cc_visit(p.read_text())
        if b.complexity > MAX_COMPLEXITY
    ]
    assert over == []


def test_no_function_over_80_lines() -> None:
    over = [
        f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for p in sources()
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno is not None
        and n.end_lineno - n.lineno + 1 > MAX_LINES
    ]
    assert over == []


def test_the_limits_catch_a_long_complex_function() -> None:
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(45))
    code = f"def f(x):\n{branches}    return -1\n"
    (block,) = cc_visit(code)
    assert block.complexity > MAX_COMPLEXITY
    (fn,) = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef)]
    assert fn.end_lineno is not None and fn.end_lineno - fn.lineno + 1 > MAX_LINES
