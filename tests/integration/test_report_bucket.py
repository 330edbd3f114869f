"""`kubectl aegis report --bucket`: drill history rebuilt from the evidence records in the
bucket (moto S3 on 127.0.0.1), as a fresh cluster with no drill objects sees it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aegis.agent.layout import drill_evidence_key
from aegis.kubectl_report import add_evidence, build_report, load_evidence, render_markdown

NOW = dt.datetime(2026, 3, 31, 12, 0, tzinfo=dt.UTC)


def evidence(drill: str, start: str, result: str, rto: float) -> dict[str, Any]:
    return {
        "apiVersion": "dr.aegis.dev/v1alpha1",
        "kind": "DrillEvidence",
        "namespace": "shop",
        "drill": drill,
        "policy": "orders",
        "type": "Restore",
        "objectives": {"rtoSeconds": 60},
        "run": {
            "startTime": start,
            "result": result,
            "reason": "DrillPassed" if result == "Passed" else "CheckFailed",
            "recoveryPoint": "orders-1",
            "rtoSeconds": rto,
            "rpoSeconds": 3600.5,
        },
    }


def test_a_fresh_cluster_reports_the_drills_the_bucket_remembers(
    s3_client: Any, s3_bucket: str
) -> None:
    runs = [
        evidence("weekly", "2026-03-23T10:00:00Z", "Passed", 41.0),
        evidence("weekly", "2026-03-30T10:00:00Z", "Failed", 50.0),
    ]
    for run in runs:
        stamp = run["run"]["startTime"].replace("-", "").replace(":", "").replace("T", "")[:14]
        key = drill_evidence_key("backups", "shop", "orders", "weekly", stamp)
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(run).encode())
    # A point's objects next to them are not evidence.
    s3_client.put_object(
        Bucket=s3_bucket, Key="backups/shop/orders/orders-1/manifest.json", Body=b"{}"
    )
    records = load_evidence(s3_client, s3_bucket, "backups")
    assert sorted(r["run"]["startTime"] for r in records) == [
        "2026-03-23T10:00:00Z",
        "2026-03-30T10:00:00Z",
    ]
    report = build_report({}, "namespace shop", NOW - dt.timedelta(days=90), NOW)
    add_evidence(report, records, "shop")
    add_evidence(report, records, "shop")  # read twice: each run once
    text = render_markdown(report)
    assert "## BackupPolicy shop/orders" in text
    assert (
        "| weekly | 2026-03-23 10:00:00Z | Passed (DrillPassed) | orders-1 | 41.0s | 60.0s met |"
        in text
    )
    assert (
        "| weekly | 2026-03-30 10:00:00Z | Failed (CheckFailed) | orders-1 | 50.0s | 60.0s met |"
        in text
    )
    other = build_report({}, "namespace payments", NOW - dt.timedelta(days=90), NOW)
    add_evidence(other, records, "payments")
    assert other.policies == []
