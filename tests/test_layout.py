"""The code stays readable: no function in ssp/ is longer than MAX_LINES unless the line
above its ``def`` says why (``# long function: ...``). Import layering and cycles are
import-linter's (pyproject.toml, `make lint`); in-function imports are ruff's PLC0415."""

import ast
from pathlib import Path

SSP = Path(__file__).resolve().parents[1] / "ssp"
MAX_LINES = 100
MARK = "# long function:"


def long_functions() -> list[str]:
    found = []
    for path in sorted(SSP.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if length > MAX_LINES and MARK not in lines[first - 2]:
                found.append(f"{path.relative_to(SSP.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_the_limit_without_a_reason():
    assert long_functions() == []
