"""Rooms stay small enough to hold one idea: no module of `components/` or `flows/` over
500 lines, no function over 80 (a longer one is several steps that want names)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for folder in ("components", "flows") for p in (REPO / folder).rglob("*.py"))


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `source` longer than the limit, its
    decorators left out, its docstring counted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append((node.name, length))
    return found


def test_no_module_is_over_the_limit() -> None:
    sizes = {p.relative_to(REPO): len(p.read_text().splitlines()) for p in _modules()}
    assert len(sizes) > 100  # the walk found the code
    over = {str(path): lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not over, over


def test_no_function_is_over_the_limit() -> None:
    over = {
        f"{path.relative_to(REPO)}:{name}": lines
        for path in _modules()
        for name, lines in long_functions(path.read_text())
    }
    assert not over, over


def test_the_function_measure_counts_a_long_body() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def short():\n    return 1\n\ndef long():\n{body}\n") == [
        ("long", MAX_FUNCTION_LINES + 1)
    ]
