"""The Argo CD health checks and actions (integrations/argocd/argocd-cm.yaml) in Lua 5.1, and the
kstatus view of Aegis conditions, on statuses as the operator writes them. The e2e suite runs
the same checks on every object it produces (tests/e2e/conftest.py)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from tests.gitops import status_checks as checks

from aegis.reconcilers.conditions import ConditionUpdate, set_conditions

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def obj(kind: str, updates: list[ConditionUpdate], *, generation: int = 1,
        observed: int | None = 1, spec: dict[str, Any] | None = None,
        **status: Any) -> dict[str, Any]:
    """An object whose conditions went through set_conditions, as every status write does."""
    conditions = set_conditions(None, updates, generation=observed, now=NOW)
    return {
        "apiVersion": "dr.aegis.dev/v1alpha1", "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": spec or {},
        "status": {"conditions": conditions, "observedGeneration": observed, **status},
    }


READY = ConditionUpdate("Ready", "True", "Scheduled", "Backups run on '0 3 * * *' (UTC)")
RPO_OK = ConditionUpdate("RPOMet", "True", "WithinObjective", "Current RPO 60s ≤ objective 3600s")

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("new policy", {"kind": "BackupPolicy", "metadata": {"name": "x", "generation": 1}},
     "Progressing", "Waiting"),
    ("healthy policy", obj("BackupPolicy", [READY, RPO_OK]), "Healthy", "Scheduled"),
    ("policy with a missing Secret",
     obj("BackupPolicy", [ConditionUpdate("Ready", "False", "SecretNotFound",
                                          "Secret ns/key not found: create it")]),
     "Degraded", "SecretNotFound"),
    ("edited policy not yet observed", obj("BackupPolicy", [READY, RPO_OK], generation=2),
     "Progressing", "generation 2"),
    ("suspended policy",
     obj("BackupPolicy", [ConditionUpdate("Ready", "True", "Suspended", "suspended"), RPO_OK],
         spec={"suspend": True}), "Suspended", "spec.suspend"),
    ("policy past its RPO",
     obj("BackupPolicy", [READY, ConditionUpdate("RPOMet", "False", "RPOBreached", "7200s")]),
     "Degraded", "RPOBreached"),
    ("policy with no point yet",
     obj("BackupPolicy", [READY, ConditionUpdate("RPOMet", "False", "NoRecoveryPoint", "none")]),
     "Progressing", "NoRecoveryPoint"),
    # RecoveryTested is informational, like a met RPO: an untested or overdue policy stays
    # Healthy in Argo CD (the condition, the report and AegisDrillOverdue say it instead).
    ("policy never drilled",
     obj("BackupPolicy", [READY, RPO_OK,
                          ConditionUpdate("RecoveryTested", "False", "NeverTested", "none")]),
     "Healthy", "Scheduled"),
    ("policy whose drill is overdue",
     obj("BackupPolicy", [READY, RPO_OK,
                          ConditionUpdate("RecoveryTested", "False", "RecoveryTestOverdue",
                                          "8d ago")]),
     "Healthy", "Scheduled"),
    ("running point",
     obj("RecoveryPoint", [ConditionUpdate("Accepted", "True", "Accepted", "ok"),
                           ConditionUpdate("Complete", "Unknown", "BackupRunning", "Job j")],
         phase="Running"), "Progressing", "BackupRunning"),
    ("completed point",
     obj("RecoveryPoint", [ConditionUpdate("Accepted", "True", "Accepted", "ok"),
                           ConditionUpdate("Complete", "True", "BackupCompleted", "done")],
         phase="Completed"), "Healthy", "BackupCompleted"),
    ("failed point",
     obj("RecoveryPoint", [ConditionUpdate("Complete", "False", "AgentFailed", "boom"),
                           ConditionUpdate("Failed", "True", "AgentFailed", "boom")],
         phase="Failed"), "Degraded", "AgentFailed"),
    ("corrupted point",
     obj("RecoveryPoint", [ConditionUpdate("Complete", "True", "BackupCompleted", "done")],
         phase="Corrupted"), "Degraded", ""),
    ("refused point",
     obj("RecoveryPoint", [ConditionUpdate("Accepted", "False", "PolicyNotFound", "no policy")]),
     "Degraded", "PolicyNotFound"),
    ("running restore",
     obj("Restore", [ConditionUpdate("Accepted", "True", "Accepted", "ok"),
                     ConditionUpdate("Complete", "Unknown", "RestoreRunning", "Job")],
         phase="Running"), "Progressing", "RestoreRunning"),
    ("failed restore",
     obj("Restore", [ConditionUpdate("Complete", "False", "TargetNotEmpty", "set allowOverwrite"),
                     ConditionUpdate("Failed", "True", "TargetNotEmpty", "set allowOverwrite")],
         phase="Failed"), "Degraded", "TargetNotEmpty"),
    ("completed restore",
     obj("Restore", [ConditionUpdate("Complete", "True", "RestoreCompleted", "checks passed"),
                     ConditionUpdate("Failed", "False", "RestoreCompleted", "checks passed")],
         phase="Completed"), "Healthy", "RestoreCompleted"),
    ("monitoring plan",
     obj("FailoverPlan", [ConditionUpdate("Ready", "True", "Monitoring", "both sites probed")],
         state="Monitoring", activeSite="primary"), "Healthy", "Monitoring"),
    ("plan awaiting approval",
     obj("FailoverPlan", [ConditionUpdate("Ready", "True", "Monitoring", "probed"),
                          ConditionUpdate("FailoverRecommended", "True", "PrimaryDown", "3/3")],
         state="AwaitingApproval", activeSite="primary"), "Suspended", "PrimaryDown"),
    ("failed-over plan",
     obj("FailoverPlan", [ConditionUpdate("Ready", "True", "Monitoring", "probed")],
         state="FailedOver", activeSite="secondary"), "Degraded", "secondary"),
    ("invalid plan",
     obj("FailoverPlan", [ConditionUpdate("Ready", "False", "InvalidSpec", "spec.x: bad")]),
     "Degraded", "InvalidSpec"),
    ("drill not run yet",
     obj("DRDrill", [ConditionUpdate("Ready", "True", "Scheduled", "next at 04:00")]),
     "Progressing", "Scheduled"),
    ("passed drill",
     obj("DRDrill", [ConditionUpdate("Ready", "True", "Scheduled", "next"),
                     ConditionUpdate("LastDrillPassed", "True", "Passed", "RTO 42s")]),
     "Healthy", "RTO 42s"),
    ("failed drill",
     obj("DRDrill", [ConditionUpdate("Ready", "True", "Scheduled", "next"),
                     ConditionUpdate("LastDrillPassed", "False", "RTOObjectiveMissed", "RTO")]),
     "Degraded", "RTOObjectiveMissed"),
    ("used approval",
     obj("FailoverApproval", [ConditionUpdate("Accepted", "True", "Accepted", "ok"),
                              ConditionUpdate("Succeeded", "True", "Used", "started t-1")],
         state="Used", message="started transition t-1"), "Healthy", "t-1"),
    ("refused approval",
     obj("FailoverApproval", [ConditionUpdate("Accepted", "True", "Accepted", "ok"),
                              ConditionUpdate("Succeeded", "False", "Refused", "stale")],
         state="Refused", message="the secondary lags"), "Degraded", "lags"),
    ("pending approval",
     obj("FailoverApproval", [ConditionUpdate("Accepted", "True", "Accepted", "ok")],
         state="Pending"), "Progressing", "next round"),
    ("unimplemented drill",
     obj("DRDrill", [ConditionUpdate("Ready", "False", "NotImplemented", "Failover drills")]),
     "Degraded", "NotImplemented"),
]


@pytest.mark.parametrize(("case", "resource", "status", "message"), CASES,
                         ids=[c[0] for c in CASES])
def test_argocd_health_follows_the_conditions(
    case: str, resource: dict[str, Any], status: str, message: str
) -> None:
    health = checks.argocd_health(resource)
    assert health["status"] == status, (case, health)
    assert message in health["message"], (case, health)
    if resource.get("status"):
        assert checks.argocd_problems(resource) == []
        assert checks.kstatus_problems(resource) == []


def test_kstatus_conditions_are_derived_from_the_kinds_own_conditions() -> None:
    refused = obj("BackupPolicy", [ConditionUpdate("Ready", "False", "InvalidSchedule", "fix")])
    assert checks.kstatus(refused) == "Failed"
    stalled = next(c for c in refused["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["reason"], stalled["message"]) == ("InvalidSchedule", "fix")
    running = obj("Restore", [ConditionUpdate("Complete", "Unknown", "RestoreRunning", "Job")])
    assert checks.kstatus(running) == "InProgress"
    done = set_conditions(running["status"]["conditions"],
                          [ConditionUpdate("Complete", "True", "RestoreCompleted", "ok")],
                          generation=1, now=NOW)
    assert {c["type"] for c in done} == {"Complete"}  # Reconciling is gone once settled
    assert checks.kstatus({**running, "status": {"conditions": done,
                                                  "observedGeneration": 1}}) == "Current"


def test_a_stalled_condition_keeps_its_transition_time_while_it_stays() -> None:
    first = set_conditions(None, [ConditionUpdate("Ready", "False", "A", "a")],
                           generation=1, now=NOW)
    later = set_conditions(first, [ConditionUpdate("Ready", "False", "B", "b")],
                           generation=1, now=NOW + dt.timedelta(hours=1))
    stalled = next(c for c in later if c["type"] == "Stalled")
    assert stalled["lastTransitionTime"] == "2026-12-01T12:00:00Z"
    assert stalled["reason"] == "B"


def test_backup_now_action_creates_an_on_demand_point_of_the_policy() -> None:
    config = checks.actions_config("BackupPolicy")
    discovered = checks.run_lua(config["discovery.lua"], {"metadata": {"name": "orders"}})
    assert discovered == {"backup-now": {"disabled": False}}
    action = next(d for d in config["definitions"] if d["name"] == "backup-now")
    policy = {"kind": "BackupPolicy", "metadata": {"name": "orders", "namespace": "shop"}}
    impacted = checks.run_lua(action["action.lua"], policy)
    assert len(impacted) == 1 and impacted[0]["operation"] == "create"
    point = impacted[0]["resource"]
    assert point["kind"] == "RecoveryPoint" and point["metadata"]["namespace"] == "shop"
    assert point["spec"] == {"policyRef": {"name": "orders"}, "trigger": "Manual"}
    assert re.fullmatch(r"orders-manual-\d{14}", point["metadata"]["name"])
    assert point["metadata"]["labels"] == {"dr.aegis.dev/policy": "orders"}


def test_run_drill_action_sets_the_run_now_annotation() -> None:
    config = checks.actions_config("DRDrill")
    action = next(d for d in config["definitions"] if d["name"] == "run-drill")
    drill = {"kind": "DRDrill", "metadata": {"name": "weekly", "namespace": "shop"}}
    patched = checks.run_lua(action["action.lua"], drill)
    stamp = patched["metadata"]["annotations"]["dr.aegis.dev/run-now"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)


def test_every_kind_has_a_health_check() -> None:
    for kind in checks.KINDS:
        assert checks.health_script(kind)
