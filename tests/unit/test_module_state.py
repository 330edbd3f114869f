"""No module-level mutable state and no import-time side effects in the operator's code
(outside the sandbox): runtime state lives in one object created at start-up (kept in kopf's
memo), so a test or a second operator in the same process starts clean.

Read from the source with `ast`, so it holds for every module, imported or not."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "operator" / "aegis"
MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter",
                 "ThreadPoolExecutor", "ProcessPoolExecutor", "Queue", "Event", "WeakSet",
                 "WeakValueDictionary", "WeakKeyDictionary", "KeyedLocks", "Condition"}
# Process-wide by nature, each with its reason: (module, name) → why.
ALLOWED: dict[tuple[str, str], str] = {
    ("metrics.py", "*"): "Prometheus collectors register once per process in one registry, "
                         "which /metrics serves",
    ("k8s/client.py", "_client"): "one connection pool per process to the one API server; its "
                                  "credentials rotate (re-read token), reset() drops it",
    ("k8s/client.py", "_lock"): "guards that one client's creation",
    ("cloud/s3.py", "_clients"): "boto3 clients (connection pools) per endpoint and "
                                 "credentials, shared by the operator's threads",
    ("cloud/s3.py", "_clients_lock"): "guards those clients",
    ("reconcilers/recoverypoint.py", "_locks"): "per-object mutexes (aegis.locks.KeyedLocks): "
                                                "hold no state and vanish when released",
    ("reconcilers/restore.py", "_locks"): "per-object mutexes, as above",
    ("reconcilers/drdrill.py", "_locks"): "per-object mutexes, as above",
}
SIDE_EFFECT_CALLS = {"start", "run", "serve", "start_http_server", "submit", "Thread",
                     "basicConfig", "setLevel", "from_env", "getenv"}


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "sandbox" not in p.relative_to(ROOT).parts)


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
    return ""


def _mutable(value: ast.AST | None) -> bool:
    if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp,
                          ast.SetComp)):
        return True
    return _call_name(value) in MUTABLE_CALLS if value is not None else False


def problems_in(path: Path) -> list[str]:
    relative = str(path.relative_to(ROOT))
    if (relative, "*") in ALLOWED:
        return []
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            names = [n for n in node.names if (relative, n) not in ALLOWED]
            if names:
                found.append(f"{relative}:{node.lineno}: `global {', '.join(names)}` "
                             "rebinds module state")
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.AST | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if any((relative, name) in ALLOWED for name in names):
            continue
        for name in names:
            # UPPER_CASE names are constants: a table the code reads and never changes.
            if _mutable(value) and not name.isupper() and not name.startswith("__"):
                found.append(f"{relative}:{node.lineno}: module-level mutable `{name}`")
        if isinstance(node, ast.Expr) and _call_name(node.value) in SIDE_EFFECT_CALLS:
            found.append(f"{relative}:{node.lineno}: a call with side effects at import")
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and _call_name(value) in (
            SIDE_EFFECT_CALLS | {"ThreadPoolExecutor", "Lock", "RLock"}
        ):
            found.append(f"{relative}:{node.lineno}: `{_call_name(value)}(...)` at import")
    return found


def test_no_module_level_mutable_state_or_import_time_side_effects() -> None:
    found = [problem for path in _modules() for problem in problems_in(path)]
    assert not found, "\n".join(found)


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    sample = ROOT / "reconcilers" / "_sample_for_the_checker.py"
    source = ("import threading\nfrom concurrent.futures import ThreadPoolExecutor\n"
              "_cache = {}\n_pool = ThreadPoolExecutor(4)\n_lock = threading.Lock()\n"
              "TABLE = {'a': 1}\n\ndef f():\n    global _cache\n    _cache = {}\n")
    try:
        sample.write_text(source)
        found = problems_in(sample)
    finally:
        sample.unlink()
    assert any("mutable `_cache`" in p for p in found)
    assert any("ThreadPoolExecutor" in p for p in found)
    assert any("Lock(...)" in p for p in found)
    assert any("global _cache" in p for p in found)
    assert not any("TABLE" in p for p in found)
