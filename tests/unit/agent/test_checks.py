"""Evaluation of verification checks (pure parts)."""

from __future__ import annotations

import pytest

from aegis.agent.checks import Check, Expect, compare_rows, evaluate, parse_checks, run_checks
from aegis.agent.errors import AgentError


def test_evaluate() -> None:
    assert evaluate("10", Expect(min=5, max=10)) == ("Passed", None)
    assert evaluate("4", Expect(min=5)) == ("Failed", "4 < min 5")
    assert evaluate("11.5", Expect(max=10)) == ("Failed", "11.5 > max 10")
    assert evaluate("abc", Expect(min=1))[0] == "Failed"
    assert evaluate(None, Expect(min=1))[0] == "Failed"
    assert evaluate("ok", Expect(equals="ok")) == ("Passed", None)
    assert evaluate("ko", Expect(equals="ok")) == ("Failed", "'ko' != 'ok'")


def test_compare_rows() -> None:
    assert compare_rows({"a.b": 1}, {"a.b": 1})[0] == "Passed"
    result, message = compare_rows(
        {"a.b": 1, "a.c": 2, "a.d": 0}, {"a.b": 1, "a.c": 3, "a.d": None}
    )
    assert result == "Failed"
    assert "missing tables: a.d" in message and "a.c: 3 != 2" in message


def test_run_checks_combines_and_never_raises() -> None:
    checks = parse_checks(
        [
            {"name": "count", "sql": "select 1", "expect": {"min": 1}},
            {"name": "rows", "expect": {"matchesBackup": True}},
            {"name": "boom", "sql": "select x", "expect": {"equals": "1"}},
            {"name": "low", "sql": "select 0", "expect": {"min": 1}},
        ],
        "checks",
    )

    def query(check: Check) -> str | None:
        if check.name == "boom":
            raise RuntimeError("relation x does not exist")
        return "1" if check.name == "count" else "0"

    outcomes = run_checks(checks, query, lambda tables: {t: 5 for t in tables}, {"public.t": 5})
    by_name = {o.name: o for o in outcomes}
    assert by_name["count"].result == "Passed" and by_name["count"].value == "1"
    assert by_name["rows"].result == "Passed" and by_name["rows"].value == "5"
    assert by_name["boom"].result == "Error" and "does not exist" in (by_name["boom"].message or "")
    assert by_name["low"].result == "Failed"


def test_matches_backup_without_counts_is_an_error() -> None:
    checks = parse_checks([{"name": "rows", "expect": {"matchesBackup": True}}], "c")
    assert run_checks(checks, lambda c: None, None, None)[0].result == "Error"


def test_bad_checks_name_the_field() -> None:
    with pytest.raises(AgentError, match=r"checks\[0\]\.expect"):
        parse_checks([{"name": "x", "sql": "select 1"}], "checks")
    with pytest.raises(AgentError, match="JSON array"):
        parse_checks({"name": "x"}, "checks")
