"""The Grafana dashboard shipped in the chart: generated from scripts/gen-dashboard.py, a
well-formed Grafana dashboard, every PromQL expression valid (checked by promtool), and every
metric it reads exported by the operator (the e2e suite also scrapes /metrics for them)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "aegis" / "dashboards" / "aegis.json"
METRIC = re.compile(r"\baegis_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# What Grafana substitutes before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*"}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def expressions() -> list[str]:
    return [t["expr"] for p in load()["panels"] for t in p.get("targets", [])]


def metric_families(expr: str) -> set[str]:
    names = set()
    for name in METRIC.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def dashboard_metric_families() -> set[str]:
    return {name for expr in expressions() for name in metric_families(expr)}


def test_the_dashboard_json_is_what_the_generator_prints() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-dashboard.py"),
                             "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    dashboard = load()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        assert key in dashboard, key
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["namespace"]["includeAll"] and variables["namespace"]["allValue"] == ".*"
    occupied: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        grid = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), p["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, p["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"])
                 for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat", "table", "gauge", "bargauge"), p["type"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        assert p.get("description"), f"panel {p['title']!r} says nothing about what it shows"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/install-system-packages.sh installs Debian's "
                    "prometheus package, which ships it")
    rules = []
    for index, expr in enumerate(expressions()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:expression_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_on_the_dashboard_is_exported_by_the_operator() -> None:
    from prometheus_client import REGISTRY, generate_latest

    # Every collector lives in aegis.metrics (importing aegis.handlers here would register
    # kopf handlers in this test process as a side effect).
    from aegis import metrics

    exported = set(re.findall(r"^# TYPE (\S+) ", generate_latest(metrics.REGISTRY).decode(),
                              re.MULTILINE))
    exported |= set(re.findall(r"^# TYPE (\S+) ", generate_latest(REGISTRY).decode(),
                               re.MULTILINE))
    exported = {name.removesuffix("_total") for name in exported} | exported
    missing = {name for name in dashboard_metric_families()
               if name not in exported and name.removesuffix("_total") not in exported}
    assert not missing, f"the dashboard reads metrics the operator does not export: {missing}"


def test_the_chart_ships_the_dashboard_for_the_grafana_sidecar(render: Any) -> None:
    documents = render(None, "--set", "grafanaDashboard.enabled=true")
    configmaps = [d for d in documents if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"].endswith("-dashboard")]
    assert len(configmaps) == 1
    configmap = configmaps[0]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["aegis.json"]) == load()
    assert not [d for d in render(None) if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].endswith("-dashboard")], "shipped while disabled"
