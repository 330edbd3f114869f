"""Every kopf handler names its id: kopf keys a handler's progress (and its retries) by id,
and a default id is the function's name, which a rename would silently change."""

from __future__ import annotations

import ast
from pathlib import Path

import aegis

PACKAGE = Path(aegis.__file__).parent
DECORATORS = ("on", "timer", "daemon")


def kopf_decorators(tree: ast.AST) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            name = ast.unparse(decorator.func)
            if name.startswith("kopf.") and name.split(".")[1] in DECORATORS:
                found.append(decorator)
    return found


def test_every_kopf_handler_has_an_explicit_id() -> None:
    missing = []
    seen = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sandbox" in path.parts:
            continue
        for call in kopf_decorators(ast.parse(path.read_text())):
            seen += 1
            if not any(k.arg == "id" for k in call.keywords):
                missing.append(f"{path.relative_to(PACKAGE)}:{call.lineno}")
    assert seen > 20, "the handlers were not found"
    assert missing == []
