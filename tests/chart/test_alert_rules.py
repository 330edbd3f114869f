"""The chart's alerting rules, as Prometheus runs them: checked and unit-tested with promtool on
synthetic series (tests/alerts/*.yaml), linked to a runbook section that exists, and written
against metric names and labels the operator really exports.

promtool comes from Debian's `prometheus` package, which scripts/install-system-packages.sh
installs (CI runs it): a missing promtool is a failure, not a skip.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aegis import metrics

ROOT = Path(__file__).resolve().parents[2]
ALERT_TESTS = ROOT / "tests" / "alerts"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RULES_FILE = "aegis-rules.yaml"  # the name tests/alerts/*.yaml load

Rules = dict[str, Any]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: install Debian's prometheus package "
            "(scripts/install-system-packages.sh, which CI runs, does)"
        )
    return path


@pytest.fixture(scope="module")
def rules(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    template_args: Callable[..., list[str]],
) -> Rules:
    """The PrometheusRule's rule groups, rendered with the chart's default values."""
    args = template_args(
        None,
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    )
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    (rule,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {"groups": rule["spec"]["groups"]}


def alerts_of(rules: Rules) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rules["groups"] for r in group["rules"] if "alert" in r}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_rendered_rules_pass_promtool_check(promtool: str, rules: Rules, tmp_path: Path) -> None:
    path = tmp_path / RULES_FILE
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules['groups'])} rules found" in (
        result.stdout + result.stderr
    )


def test_alerts_fire_and_stay_silent_as_the_promtool_tests_say(
    promtool: str, rules: Rules, tmp_path: Path
) -> None:
    # Descriptions carry `$value` (extrapolated by increase()) and the runbook link is checked
    # below: the unit tests compare labels and the summary only.
    rules = copy.deepcopy(rules)
    for alert in alerts_of(rules).values():
        alert["annotations"] = {"summary": alert["annotations"]["summary"]}
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = sorted(ALERT_TESTS.glob("*.yaml"))
    assert tests
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
    result = run(promtool, "test", "rules", *(str(tmp_path / t.name) for t in tests))
    assert result.returncode == 0, result.stdout + result.stderr


def _cases() -> dict[str, dict[str, int]]:
    """alert → how many promtool cases expect it to fire and to stay silent."""
    cases: dict[str, dict[str, int]] = {}
    for test in sorted(ALERT_TESTS.glob("*.yaml")):
        for group in yaml.safe_load(test.read_text())["tests"]:
            for case in group.get("alert_rule_test") or []:
                kind = "fires" if case.get("exp_alerts") else "silent"
                counts = cases.setdefault(case["alertname"], {"fires": 0, "silent": 0})
                counts[kind] += 1
    return cases


def test_every_alert_has_a_firing_and_a_silent_case(rules: Rules) -> None:
    cases = _cases()
    for name in alerts_of(rules):
        counts = cases.get(name, {"fires": 0, "silent": 0})
        assert counts["fires"] and counts["silent"], (
            f"{name}: add promtool cases to tests/alerts/ where it fires and where it stays "
            f"silent (has {counts})"
        )
    assert set(cases) <= set(alerts_of(rules)), "tests/alerts/ tests an alert the rules lack"


def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation
    dropped, spaces to dashes)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_links_to_its_runbook_section(rules: Rules) -> None:
    anchors = _github_anchors(RUNBOOKS.read_text())
    for name, alert in alerts_of(rules).items():
        url = alert["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        # The default base is the project's docs/runbooks.md on GitHub.
        assert base.endswith("/docs/runbooks.md"), url
        assert anchor == name.lower() and anchor in anchors, (
            f"{name}: docs/runbooks.md has no section '## {name}' for {url}"
        )


# ---- the rules against the metrics the operator exports ------------------------------------

_LABEL_LISTS = re.compile(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)")
_SELECTOR_LABELS = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def referenced(expr: str) -> tuple[set[str], set[str]]:
    """The Aegis metric names and the label names an expression uses."""
    names = set(re.findall(r"\baegis_[a-z0-9_]+\b", expr))
    labels = set(_SELECTOR_LABELS.findall(expr))
    for group in _LABEL_LISTS.findall(expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return names, labels


def exported_after_policy_seen() -> dict[str, list[dict[str, str]]]:
    """Sample name → label sets on /metrics once the operator has seen one policy (and
    before it has done anything with it)."""
    metrics.policy_seen(
        {
            "metadata": {
                "namespace": "rules-check",
                "name": "orders",
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"objectives": {"rpoSeconds": 3600}},
        }
    )
    try:
        text = generate_latest(REGISTRY).decode()
    finally:
        metrics.forget_policy("rules-check", "orders")
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def declared_labels() -> dict[str, set[str]]:
    """Sample name → label names of every metric metrics.py defines, samples or not yet."""
    declared: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("aegis_"):
            continue
        suffix = "_total" if family.type == "counter" else ""
        declared[family.name + suffix] = set()
    for value in vars(metrics).values():
        names = getattr(value, "_labelnames", None)
        describe = getattr(value, "describe", None)
        if names is None or describe is None:
            continue
        for family in describe():
            suffix = "_total" if family.type == "counter" else ""
            declared[family.name + suffix] = set(names)
    declared[metrics.RpoCollector.NAME] = {"namespace", "policy"}
    return declared


def test_rules_use_only_metrics_and_labels_the_operator_exports(rules: Rules) -> None:
    declared = declared_labels()
    for name, alert in alerts_of(rules).items():
        used, labels = referenced(alert["expr"])
        labels |= set(re.findall(r"\$labels\.([a-zA-Z_]+)", alert["annotations"]["summary"]))
        for metric in used:
            assert metric in declared, f"{name} uses {metric}, which aegis.metrics does not define"
            assert labels <= declared[metric], (
                f"{name} uses labels {labels - declared[metric]} that {metric} does not have"
            )


def test_policy_alert_series_exist_as_soon_as_the_policy_is_seen(rules: Rules) -> None:
    """increase() misses a counter's first step when the series appears already at 1, and a
    missing series never breaches anything: every series the policy and restore alerts read
    is on /metrics from the moment the operator sees the policy."""
    samples = exported_after_policy_seen()
    policy_groups = {"aegis.backups", "aegis.integrity", "aegis.restores"}
    checked = 0
    for group in rules["groups"]:
        if group["name"] not in policy_groups:
            continue
        for rule in group["rules"]:
            used, _ = referenced(rule["expr"])
            for metric in used:
                series = [s for s in samples.get(metric, []) if s.get("namespace") == "rules-check"]
                assert series, f"{rule['alert']}: no {metric} series after policy_seen"
                checked += 1
    assert checked >= 7
