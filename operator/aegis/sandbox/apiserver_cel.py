"""A small evaluator for the CEL subset our CRDs' `x-kubernetes-validations` rules use.

Supported: literals, `self` / `oldSelf`, field access, indexing, `has()`, `size()`, string
`startsWith` / `endsWith` / `contains` / `matches`, `in`, arithmetic, comparisons, `!`, `&&`,
`||` and `?:`. A rule using anything else is skipped (treated as passing): the emulator is
stricter than no validation and never stricter than the real server. Transition rules (those
naming `oldSelf`) run only on updates, as in the real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aegis.sandbox.apiserver_errors import FieldCause

Node = tuple[Any, ...]
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d+|\d+)|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:().,\[\]])|(?P<id>[A-Za-z_][A-Za-z0-9_]*))"
)


class Unsupported(Exception):
    """The rule uses CEL the evaluator does not implement: skip it."""


class EvalError(Exception):
    """The rule failed at runtime (e.g. `no such key`), as it would in the real server."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise Unsupported(f"cannot tokenize {text[pos:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


class _Parser:
    BINARY = [("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"),
              ("*", "/", "%")]

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise Unsupported("unexpected end")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise Unsupported(f"expected {expected!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.ternary()
        if self.pos != len(self.tokens):
            raise Unsupported(f"trailing {self.peek()!r}")
        return node

    def ternary(self) -> Node:
        cond = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            then = self.ternary()
            self.take(":")
            return ("?:", cond, then, self.ternary())
        return cond

    def binary(self, level: int) -> Node:
        if level == len(self.BINARY):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek() in self.BINARY[level]:
            op = self.take()[1]
            node = ("bin", op, node, self.binary(level + 1))
        return node

    def unary(self) -> Node:
        if self.peek() in ("!", "-"):
            op = self.take()[1]
            return ("unary", op, self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                name = self.take()
                if name[0] != "id":
                    raise Unsupported("bad member")
                if self.peek() == "(":
                    node = ("call", name[1], [node, *self.args()])
                else:
                    node = ("field", node, name[1])
            else:
                index = self.ternary()
                self.take("]")
                node = ("index", node, index)
        return node

    def args(self) -> list[Node]:
        self.take("(")
        args: list[Node] = []
        while self.peek() != ")":
            args.append(self.ternary())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return args

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "num":
            return ("lit", float(value) if "." in value else int(value))
        if kind == "str":
            return ("lit", bytes(value[1:-1], "utf-8").decode("unicode_escape"))
        if value == "(":
            node = self.ternary()
            self.take(")")
            return node
        if kind == "id":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "null":
                return ("lit", None)
            if self.peek() == "(":
                if value == "has":
                    args = self.args()
                    if len(args) != 1 or args[0][0] != "field":
                        raise Unsupported("has() needs a field")
                    return ("has", args[0])
                return ("call", value, self.args())
            if value in ("self", "oldSelf"):
                return ("var", value)
        raise Unsupported(f"unsupported token {value!r}")


@lru_cache(maxsize=256)
def compile_rule(rule: str) -> Node:
    return _Parser(_tokenize(rule)).parse()


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        if name not in obj:
            raise EvalError(f"no such key: {name}")
        return obj[name]
    raise EvalError(f"no such key: {name}")


_METHODS: dict[str, Callable[..., Any]] = {
    "size": lambda x: len(x),
    "startsWith": lambda s, p: s.startswith(p),
    "endsWith": lambda s, p: s.endswith(p),
    "contains": lambda s, p: p in s,
    "matches": lambda s, p: re.search(p, s) is not None,
}


def evaluate(node: Node, env: dict[str, Any]) -> Any:
    tag = node[0]
    if tag == "lit":
        return node[1]
    if tag == "var":
        return env[node[1]]
    if tag == "field":
        return _field(evaluate(node[1], env), node[2])
    if tag == "index":
        base, index = evaluate(node[1], env), evaluate(node[2], env)
        try:
            return base[index]
        except (KeyError, IndexError, TypeError) as exc:
            raise EvalError(f"no such key: {index}") from exc
    if tag == "has":
        target = evaluate(node[1][1], env)
        return isinstance(target, dict) and node[1][2] in target
    if tag == "call":
        fn = _METHODS.get(node[1])
        if fn is None:
            raise Unsupported(f"function {node[1]}")
        return fn(*[evaluate(arg, env) for arg in node[2]])
    if tag == "unary":
        value = evaluate(node[2], env)
        return (not value) if node[1] == "!" else -value
    if tag == "?:":
        return evaluate(node[2] if evaluate(node[1], env) else node[3], env)
    op, left_node, right_node = node[1], node[2], node[3]
    if op == "&&":
        return bool(evaluate(left_node, env)) and bool(evaluate(right_node, env))
    if op == "||":
        return bool(evaluate(left_node, env)) or bool(evaluate(right_node, env))
    left, right = evaluate(left_node, env), evaluate(right_node, env)
    operations: dict[str, Callable[[Any, Any], Any]] = {
        "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
        "in": lambda a, b: a in b, "+": lambda a, b: a + b, "-": lambda a, b: a - b,
        "*": lambda a, b: a * b, "/": lambda a, b: a // b if isinstance(a, int) else a / b,
        "%": lambda a, b: a % b,
    }
    try:
        return operations[op](left, right)
    except TypeError as exc:
        raise EvalError(f"no such overload: {op}") from exc


def _value_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return str(value)


def evaluate_rules(value: Any, old: Any, schema: dict[str, Any], path: str) -> list[FieldCause]:
    """Causes for the failing `x-kubernetes-validations` rules of one schema node."""
    causes = []
    for rule in schema.get("x-kubernetes-validations") or []:
        text = str(rule.get("rule", ""))
        try:
            node = compile_rule(text)
        except Unsupported:
            continue
        if "oldSelf" in text and old is None:
            continue  # transition rules apply to updates only
        field = path
        if rule.get("fieldPath"):
            field = f"{path}{rule['fieldPath']}" if path else str(rule["fieldPath"]).lstrip(".")
        reason = str(rule.get("reason") or "FieldValueInvalid")
        try:
            ok = bool(evaluate(node, {"self": value, "oldSelf": old}))
        except Unsupported:
            continue
        except EvalError as exc:
            causes.append(FieldCause(field, reason, f'Invalid value: "{_value_kind(value)}": '
                                                    f"{exc} evaluating rule: {text}"))
            continue
        except (ZeroDivisionError, re.error):
            continue
        if not ok:
            message = str(rule.get("message") or f"failed rule: {text}")
            causes.append(FieldCause(field, reason,
                                     f'Invalid value: "{_value_kind(value)}": {message}'))
    return causes
