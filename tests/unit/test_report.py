"""`kubectl aegis report`, the pure parts: what the report says from given objects, and that
its HTML is one self-contained page with the charts."""

from __future__ import annotations

import datetime as dt
from html.parser import HTMLParser
from typing import Any

from aegis.kubectl_report import build_report, parse_since, render_html, render_markdown

NOW = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.UTC)


def point(
    name: str, source: str, phase: str = "Completed", verified: bool = False
) -> dict[str, Any]:
    conditions = [{"type": "Verified", "status": "True"}] if verified else []
    return {
        "metadata": {"namespace": "shop", "name": name, "creationTimestamp": source},
        "spec": {"policyRef": {"name": "orders"}},
        "status": {
            "phase": phase,
            "sourceTime": source,
            "startTime": source,
            "conditions": conditions,
        },
    }


def run(
    start: str, result: str, rto: float, rpo: float, reason: str = "DrillPassed"
) -> dict[str, Any]:
    return {
        "startTime": start,
        "result": result,
        "reason": reason,
        "recoveryPoint": "orders-2",
        "rtoSeconds": rto,
        "rpoSeconds": rpo,
    }


OBJECTS: dict[str, list[dict[str, Any]]] = {
    "backuppolicies": [
        {
            "metadata": {"namespace": "shop", "name": "orders"},
            "spec": {"objectives": {"rpoSeconds": 7200}},
            "status": {"currentRPOSeconds": 1800},
        }
    ],
    "recoverypoints": [
        point("orders-1", "2026-03-30T00:00:00Z"),
        point("orders-2", "2026-03-30T01:00:00Z", verified=True),
        point("orders-3", "2026-03-30T04:00:00Z"),  # a 3 h gap: over the 2 h objective
        point("orders-4", "2026-03-30T05:00:00Z", phase="Failed"),
        point("orders-old", "2025-01-01T00:00:00Z", phase="Failed"),  # outside the period
    ],
    "drdrills": [
        {
            "metadata": {"namespace": "shop", "name": "weekly"},
            "spec": {
                "type": "Restore",
                "restore": {"policyRef": {"name": "orders"}},
                "objectives": {"rtoSeconds": 60},
            },
            "status": {
                "lastRun": run("2026-03-30T10:00:00Z", "Failed", 75.5, 32400, "RTOObjectiveMissed"),
                "history": [
                    run("2026-03-30T10:00:00Z", "Failed", 75.5, 32400, "RTOObjectiveMissed"),
                    run("2026-03-23T10:00:00Z", "Passed", 41.0, 30000),
                ],
            },
        },
        {
            "metadata": {"namespace": "shop", "name": "orders-failover"},
            "spec": {
                "type": "Failover",
                "failover": {"planRef": {"name": "orders"}},
                "objectives": {"rtoSeconds": 120},
            },
            "status": {
                "lastRun": {
                    "startTime": "2026-03-30T11:00:00Z",
                    "result": "Passed",
                    "reason": "DrillPassed",
                    "plan": "orders",
                    "rtoSeconds": 42.0,
                    "rtoPredicted": True,
                },
                "history": [
                    {
                        "startTime": "2026-03-29T11:00:00Z",
                        "result": "Failed",
                        "reason": "StandbyNotInRecovery",
                        "plan": "orders",
                    }
                ],
            },
        },
    ],
    "failoverplans": [
        {
            "metadata": {"namespace": "shop", "name": "orders"},
            "status": {
                "state": "FailedOver",
                "lastTransition": {
                    "kind": "Failover",
                    "reason": "Manual: drill",
                    "startTime": "2026-03-29T08:00:00Z",
                    "durationSeconds": 12.5,
                },
            },
        }
    ],
}


def report() -> Any:
    return build_report(OBJECTS, "namespace shop", NOW - parse_since("90d"), NOW)


def test_the_report_counts_backups_gaps_and_drills_from_status() -> None:
    (policy,) = report().policies
    assert (policy.succeeded, policy.failed, policy.verified) == (3, 1, 1)
    assert policy.worst_gap == 3 * 3600
    assert [(d.result, d.rto) for d in policy.drills] == [("Passed", 41.0), ("Failed", 75.5)]


def test_failover_drill_runs_are_listed_per_plan_not_under_a_policy() -> None:
    rows = report().failover_drills
    assert [(d.drill, d.plan, d.result, d.reason, d.rto, d.rto_predicted) for d in rows] == [
        ("orders-failover", "orders", "Failed", "StandbyNotInRecovery", None, False),
        ("orders-failover", "orders", "Passed", "DrillPassed", 42.0, True),
    ]


def test_markdown_shows_objectives_against_measurements() -> None:
    text = render_markdown(report())
    assert "## BackupPolicy shop/orders" in text
    assert "| 7200.0s | 1800.0s (met) | 10800.0s (MISSED) | 3 | 1 | 1 |" in text
    assert (
        "| weekly | 2026-03-30 10:00:00Z | Failed (RTOObjectiveMissed) | orders-2 | 75.5s " in text
    )
    assert "| 60.0s MISSED |" in text
    assert "| shop/orders | Failover | Manual: drill | 2026-03-29 08:00:00Z | 12.5s |" in text
    assert "## Failover drills" in text
    assert (
        "| shop/orders-failover | orders | DryRun | 2026-03-30 11:00:00Z | Passed (DrillPassed) "
        "| 42.0s (predicted) | 120.0s met | - |"
    ) in text


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_with_rto_and_rpo_charts() -> None:
    page = render_html(report())
    parser = _Collect()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert not any((a.get("src") or a.get("href") or "").startswith("http") for _, a in parser.tags)
    svgs = [a for t, a in parser.tags if t == "svg"]
    assert [a["aria-label"] for a in svgs] == [
        "RPO over time: gap between consecutive backups",
        "Drill weekly: measured RTO per run",
        "Failover drill orders-failover: RTO per run",
    ]
    bars = [a for t, a in parser.tags if t == "rect" and a.get("class") == "bar"]
    # two gaps between three backups, two restore drill runs, one failover run with an RTO
    assert len(bars) == 2 + 2 + 1
    assert sum(1 for t, a in parser.tags if t == "line" and a.get("class") == "objective") == 3
    assert page.count('class="missed"') >= 4  # the gap, the failed runs, the missed RTO
