#!/usr/bin/env python3
# ruff: noqa: E501  (the panel table reads best with one query per line)
"""Generate the Grafana dashboard shipped in the chart (charts/aegis/dashboards/aegis.json).

The panels are listed here as data, so adding one is a line, and tests/chart/test_dashboard.py
fails when the JSON in the chart differs from what this prints (as for the CRDs).

    python scripts/gen-dashboard.py            # rewrite the JSON
    python scripts/gen-dashboard.py --check    # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "aegis" / "dashboards" / "aegis.json"
NS = 'namespace=~"$namespace"'
DS = {"type": "prometheus", "uid": "${datasource}"}

# (row title, [(panel title, type, unit, [(expr, legend)], description)])
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]], str]]]] = [
    ("Backups", [
        ("RPO against objective", "timeseries", "s", [
            (f"max by (namespace, policy) (aegis_rpo_seconds{{{NS}}})", "{{namespace}}/{{policy}} RPO"),
            (f"max by (namespace, policy) (aegis_rpo_objective_seconds{{{NS}}})",
             "{{namespace}}/{{policy}} objective"),
        ], "Age of the newest completed point's source time (from the policy's creation when none "
           "exists), against spec.objectives.rpoSeconds."),
        ("Policies past their RPO objective", "stat", "none", [
            (f"count(aegis_rpo_seconds{{{NS}}} > on (namespace, policy) "
             f"aegis_rpo_objective_seconds{{{NS}}}) or vector(0)", "breaching"),
        ], "Policies whose current RPO exceeds their objective: each one pages AegisRPOBreached."),
        ("Backup duration (p50, p95)", "timeseries", "s", [
            (f"histogram_quantile(0.5, sum by (le, namespace, policy) "
             f"(rate(aegis_backup_duration_seconds_bucket{{{NS}}}[$__rate_interval])))",
             "{{namespace}}/{{policy}} p50"),
            (f"histogram_quantile(0.95, sum by (le, namespace, policy) "
             f"(rate(aegis_backup_duration_seconds_bucket{{{NS}}}[$__rate_interval])))",
             "{{namespace}}/{{policy}} p95"),
        ], "Measured by the agent, from the source's first byte to the manifest in the bucket."),
        ("Backup size (stored bytes)", "timeseries", "bytes", [
            (f"max by (namespace, policy) (aegis_backup_size_bytes{{{NS}}})", "{{namespace}}/{{policy}}"),
        ], "Bytes stored in the bucket by the newest completed backup (compressed, encrypted)."),
        ("Backup, copy and verification failures", "timeseries", "short", [
            (f"sum by (namespace, policy) (increase(aegis_backup_failures_total{{{NS}}}[$__range]))",
             "{{namespace}}/{{policy}} backups"),
            (f"sum by (namespace, policy) (increase(aegis_copy_failures_total{{{NS}}}[$__range]))",
             "{{namespace}}/{{policy}} copies"),
            (f"sum by (namespace, policy) (increase(aegis_verification_failures_total{{{NS}}}[$__range]))",
             "{{namespace}}/{{policy}} verifications"),
        ], "Failed backup attempts, failed copies to spec.copies buckets and failed verifications "
           "over the dashboard's time range."),
        ("Copy and verification failures", "timeseries", "short", [
            (f"sum by (namespace, policy) (increase(aegis_copy_failures_total{{{NS}}}[$__range]))",
             "{{namespace}}/{{policy}} copies"),
            (f"sum by (namespace, policy) "
             f"(increase(aegis_verification_failures_total{{{NS}}}[$__range]))",
             "{{namespace}}/{{policy}} verifications"),
        ], "Copies to other buckets that failed, and points that failed an integrity check "
           "(restore or verification) over the time range."),
        ("Recovery points by phase", "timeseries", "short", [
            (f"sum by (namespace, policy, phase) (aegis_recovery_points{{{NS}}})",
             "{{namespace}}/{{policy}} {{phase}}"),
        ], "RecoveryPoints kept per policy after retention, by phase: only Completed ones can be "
           "restored; Corrupted ones failed an integrity check."),
    ]),
    ("Restores", [
        ("Restore duration (p50, p95)", "timeseries", "s", [
            (f"histogram_quantile(0.5, sum by (le, namespace) "
             f"(rate(aegis_restore_duration_seconds_bucket{{{NS}}}[$__rate_interval])))",
             "{{namespace}} p50"),
            (f"histogram_quantile(0.95, sum by (le, namespace) "
             f"(rate(aegis_restore_duration_seconds_bucket{{{NS}}}[$__rate_interval])))",
             "{{namespace}} p95"),
        ], "Restore Jobs from start to checks passed."),
        ("Restore failures", "stat", "short", [
            (f"sum(increase(aegis_restore_failures_total{{{NS}}}[$__range])) or vector(0)", "failed"),
        ], "Restores that ended Failed over the time range."),
    ]),
    ("Failover", [
        ("Site health", "timeseries", "bool", [
            (f"max by (namespace, plan, site) (aegis_site_healthy{{{NS}}})",
             "{{namespace}}/{{plan}} {{site}}"),
        ], "1 when the site's checks pass (with the plan's thresholds)."),
        ("Plan state", "table", "none", [
            (f"max by (namespace, plan, state) (aegis_failover_state{{{NS}}}) == 1", "{{state}}"),
        ], "Where each FailoverPlan is in its lifecycle."),
        ("Probe latency (p95)", "timeseries", "s", [
            (f"histogram_quantile(0.95, sum by (le, namespace, plan, site) "
             f"(rate(aegis_probe_latency_seconds_bucket{{{NS}}}[$__rate_interval])))",
             "{{namespace}}/{{plan}} {{site}}"),
        ], "How long a full round of a site's checks takes."),
        ("Failovers and failbacks", "timeseries", "short", [
            (f"sum by (namespace, plan, kind, result) "
             f"(increase(aegis_failover_total{{{NS}}}[$__range]))",
             "{{namespace}}/{{plan}} {{kind}} {{result}}"),
        ], "Executed transitions, by result."),
        ("Failover duration (p95)", "timeseries", "s", [
            (f"histogram_quantile(0.95, sum by (le, namespace, plan, kind) "
             f"(rate(aegis_failover_duration_seconds_bucket{{{NS}}}[$__rate_interval])))",
             "{{namespace}}/{{plan}} {{kind}}"),
        ], "Measured from the decision to DNS INSYNC."),
    ]),
    ("Operator", [
        ("Objects not Ready", "table", "none", [
            (f"aegis_resource_ready{{{NS}}} == 0", "{{kind}} {{namespace}}/{{name}}"),
        ], "Aegis objects whose Ready/Accepted condition is False: kubectl describe names the fix."),
        ("Refused specs", "stat", "short", [
            (f"sum(increase(aegis_invalid_spec_total{{{NS}}}[$__range])) or vector(0)", "refused"),
        ], "Specs the operator refused over the time range."),
    ]),
]


def panel(panel_id: int, title: str, type_: str, unit: str, targets: list[tuple[str, str]],
          description: str, x: int, y: int) -> dict[str, Any]:
    width = 8 if type_ != "timeseries" else 12
    body: dict[str, Any] = {
        "id": panel_id,
        "type": type_,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             **({"instant": True, "format": "table"} if type_ == "table" else {})}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    return body


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id, y, x = next_id + 1, y + 1, 0
        for title, type_, unit, targets, description in row_panels:
            built = panel(next_id, title, type_, unit, targets, description, x, y)
            width = built["gridPos"]["w"]
            if x + width > 24:
                x, y = 0, y + 8
                built["gridPos"].update(x=0, y=y)
            panels.append(built)
            next_id, x = next_id + 1, x + width
        y += 8
    return {
        "uid": "aegis-dr",
        "title": "Aegis disaster recovery",
        "description": "RPO, backups, restores and failover measured by the Aegis operator.",
        "tags": ["aegis", "disaster-recovery"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "timezone": "utc",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
             "current": {}, "hide": 0},
            {"name": "namespace", "type": "query", "label": "Namespace", "datasource": DS,
             "query": {"query": "label_values(aegis_resource_ready, namespace)", "refId": "ns"},
             "definition": "label_values(aegis_resource_ready, namespace)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/gen-dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
