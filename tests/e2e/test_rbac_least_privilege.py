"""The chart's RBAC, proven by behaviour: after every other e2e test ran the operator as the
chart's ServiceAccount (see conftest.py), the emulator's record of what that identity did is
compared with what the chart grants.

- Nothing the operator asked for was refused (a refusal is a missing rule, or a code path
  asking for something it should not).
- Every rule the chart grants was used, except the few listed in `NOT_REACHED`, each with the
  path that needs it and why the e2e suite does not reach it. Checked only when the session
  ran every e2e module unfiltered and green (otherwise unused rules say nothing).
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.e2e.helpers import OperatorIdentity, full_e2e_run

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Granted by the chart but not exercised by the e2e suite: (group, resource, verb) -> why.
NOT_REACHED: dict[Grant, str] = {
    ("batch", "jobs", "delete"): (
        "BackupPolicy concurrencyPolicy Replace stops the active run by deleting its Job "
        "(reconcilers/backuppolicy.py `_replace`); no e2e schedule overlaps a running backup"),
    ("apps", "statefulsets", "get"): (
        "FailoverPlan workload checks of a StatefulSet (k8s/workloads.py `read_replicas`); the "
        "e2e plans check Deployments, the same code path with the other kind"),
    ("apps", "statefulsets/scale", "patch"): (
        "FailoverPlan scale steps on a StatefulSet (k8s/workloads.py `set_replicas`); the e2e "
        "plans scale Deployments, the same code path with the other kind"),
}


def granted(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(group, resource, verb) for rule in rules for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", []) for verb in rule.get("verbs", [])}


def test_operator_was_refused_nothing_and_used_every_granted_rule(
    k8s_api: Any, operator_identity: OperatorIdentity, request: pytest.FixtureRequest
) -> None:
    if not getattr(k8s_api, "emulated", False):
        pytest.skip("the usage record is the emulator's; a real cluster keeps audit logs")
    usage = dict(k8s_api.server.usage(operator_identity.user))
    for other in operator_identity.other_usage:  # a second cluster of the session
        for access, count in other.items():
            usage[access] = usage.get(access, 0) + count
    if not usage:
        pytest.skip("the operator did not run in this session")
    refused = sorted(f"{a.verb} {a.resource_name or a.path} (group {a.group!r}, "
                     f"namespace {a.namespace!r}) x{n}" for a, n in usage.items()
                     if not a.allowed)
    assert not refused, "the operator was refused:\n" + "\n".join(refused)

    chart = granted(operator_identity.rules)
    assert set(NOT_REACHED) <= chart, (
        f"listed as not reached but not granted: {sorted(set(NOT_REACHED) - chart)}")
    partial = full_e2e_run(request.session)
    if partial is not None:
        pytest.skip(f"unused-rule check needs the whole e2e suite, green: {partial}")
    used = {(a.group, a.resource_name, a.verb) for a in usage if a.allowed and a.resource}
    unused = sorted(chart - used - set(NOT_REACHED))
    assert not unused, (
        "the chart grants what the operator never used (trim charts/aegis/templates/"
        f"_helpers.tpl, or list it in NOT_REACHED with the reason): {unused}")
    reached = sorted(set(NOT_REACHED) & used)
    assert not reached, f"listed in NOT_REACHED but used by the e2e run: {reached}"
