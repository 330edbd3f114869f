"""Verification checks after a restore (Restore.spec.verify): parsing and pure evaluation,
plus the thin runners that query the restored PostgreSQL or Redis."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ValidationError

from aegis.agent.errors import AgentError
from aegis.agent.scrub import scrub
from aegis.agent.wire import WireRecord

Result = Literal["Passed", "Failed", "Error"]


# The operator validated the checks already (aegis.api.checks); these tolerate fields added by
# newer versions.
class Expect(WireRecord):
    min: float | None = None
    max: float | None = None
    equals: str | None = None
    matches_backup: bool | None = None


class RedisQuery(WireRecord):
    op: Literal["KeyCount", "KeyExists", "Get", "TTL"]
    key: str | None = None


class Check(WireRecord):
    name: str
    sql: str | None = None
    redis: RedisQuery | None = None
    command: list[str] | None = None
    expect: Expect


class CheckOutcome(WireRecord):
    name: str
    result: Result
    value: str | None = None
    message: str | None = None


def parse_checks(raw: Any, where: str) -> list[Check]:
    if not isinstance(raw, list):
        raise AgentError(
            f"{where}: checks must be a JSON array of {{name, sql|redis, expect}}",
            kind="InvalidConfig",
        )
    checks = []
    for i, item in enumerate(raw):
        try:
            checks.append(Check.model_validate(item))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise AgentError(
                f"{where}[{i}].{field}: {first['msg']}", kind="InvalidConfig"
            ) from None
    return checks


def evaluate(value: str | None, expect: Expect) -> tuple[Result, str | None]:
    """Compare a query's value (as text) with min/max/equals."""
    problems: list[str] = []
    if expect.min is not None or expect.max is not None:
        number = _number(value)
        if number is None:
            return "Failed", f"value {value!r} is not a number"
        if expect.min is not None and number < expect.min:
            problems.append(f"{_fmt(number)} < min {_fmt(expect.min)}")
        if expect.max is not None and number > expect.max:
            problems.append(f"{_fmt(number)} > max {_fmt(expect.max)}")
    if expect.equals is not None and value != expect.equals:
        problems.append(f"{value!r} != {expect.equals!r}")
    return ("Failed", "; ".join(problems)) if problems else ("Passed", None)


def compare_rows(expected: dict[str, int], actual: dict[str, int | None]) -> tuple[Result, str]:
    """Per-table row counts of the restored database vs the manifest's."""
    missing = [t for t in expected if actual.get(t) is None]
    wrong = [
        f"{t}: {actual[t]} != {n}"
        for t, n in expected.items()
        if actual.get(t) is not None and actual[t] != n
    ]
    if not missing and not wrong:
        return "Passed", f"{len(expected)} tables, {sum(expected.values())} rows match"
    parts = []
    if missing:
        parts.append(
            f"missing tables: {', '.join(missing[:5])}"
            + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    if wrong:
        parts.append(
            f"row counts differ: {'; '.join(wrong[:5])}"
            + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else "")
        )
    return "Failed", "; ".join(parts)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _fmt(number: float) -> str:
    return str(int(number)) if number.is_integer() else str(number)


Query = Callable[[Check], str | None]
RowCounter = Callable[[list[str]], dict[str, int | None]]


def run_checks(
    checks: list[Check],
    query: Query,
    count_rows: RowCounter | None,
    backup_rows: dict[str, int] | None,
) -> list[CheckOutcome]:
    """Run every check; a failing query is an Error outcome, never an exception."""
    outcomes = []
    for check in checks:
        outcomes.append(_run_one(check, query, count_rows, backup_rows))
    return outcomes


def _run_one(
    check: Check, query: Query, count_rows: RowCounter | None, backup_rows: dict[str, int] | None
) -> CheckOutcome:
    results: list[tuple[Result, str | None]] = []
    value: str | None = None
    try:
        if check.sql is not None or check.redis is not None or check.command is not None:
            value = query(check)
            if any(
                v is not None for v in (check.expect.min, check.expect.max, check.expect.equals)
            ):
                results.append(evaluate(value, check.expect))
        if check.expect.matches_backup:
            if count_rows is None or backup_rows is None:
                results.append(
                    (
                        "Error",
                        "matchesBackup needs a PostgreSQL backup with row counts in its manifest",
                    )
                )
            else:
                results.append(compare_rows(backup_rows, count_rows(sorted(backup_rows))))
                if value is None:
                    value = str(sum(backup_rows.values()))
    except Exception as error:
        return CheckOutcome(
            name=check.name,
            result="Error",
            value=value,
            message=scrub(
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            ),
        )
    worst: tuple[Result, ...] = ("Error", "Failed")
    for wanted in worst:
        bad = [m for r, m in results if r == wanted]
        if bad:
            return CheckOutcome(
                name=check.name,
                result=wanted,
                value=value,
                message="; ".join(m for m in bad if m) or None,
            )
    detail = next((m for _r, m in results if m), None)
    return CheckOutcome(name=check.name, result="Passed", value=value, message=detail)
