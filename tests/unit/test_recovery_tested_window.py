"""BackupPolicy RecoveryTested: derived from status.lastDrill and the clock (pure), and the
lastDrill patch a drill run writes."""

from __future__ import annotations

import datetime as dt

from aegis.reconcilers.conditions import ConditionUpdate, set_conditions
from aegis.reconcilers.drdrill import policy_drill
from aegis.reconcilers.policy_status import recovery_tested

UTC = dt.UTC
PASSED = dt.datetime(2026, 3, 2, 4, 0, 0, tzinfo=UTC)
WEEK = 7 * 86400


def test_never_tested_is_false_and_says_how_to_fix_it() -> None:
    update = recovery_tested(None, WEEK, PASSED)
    assert (update.status, update.reason) == ("False", "NeverTested")
    assert "DRDrill" in update.message
    failed = recovery_tested(
        {"drill": "nightly", "result": "Failed", "reason": "CheckFailed"}, WEEK, PASSED
    )
    assert (failed.status, failed.reason) == ("False", "NeverTested")
    assert "drill/nightly" in failed.message and "CheckFailed" in failed.message


def test_a_pass_within_the_window_is_true_until_the_window_passes() -> None:
    drill = {"lastPassedTime": "2026-03-02T04:00:00Z", "lastPassedDrill": "nightly",
             "result": "Passed"}
    inside = recovery_tested(drill, WEEK, PASSED + dt.timedelta(days=7))
    assert (inside.status, inside.reason) == ("True", "DrillPassed")
    assert "drill/nightly passed at 2026-03-02T04:00:00Z" in inside.message
    assert "(7d)" in inside.message
    outside = recovery_tested(drill, WEEK, PASSED + dt.timedelta(days=7, seconds=1))
    assert (outside.status, outside.reason) == ("False", "RecoveryTestOverdue")
    assert "drill/nightly" in outside.message
    # The message does not age with the clock (no status rewrite per refresh).
    later = recovery_tested(drill, WEEK, PASSED + dt.timedelta(days=30))
    assert later.message == outside.message
    short = recovery_tested(drill, 3600, PASSED + dt.timedelta(hours=2))
    assert short.status == "False" and "(1h)" in short.message


def test_a_later_failed_run_keeps_the_last_pass() -> None:
    drill = {"lastPassedTime": "2026-03-02T04:00:00Z", "lastPassedDrill": "nightly",
             "result": "Failed", "reason": "RTOObjectiveMissed", "time": "2026-03-03T04:00:00Z"}
    update = recovery_tested(drill, WEEK, PASSED + dt.timedelta(days=2))
    assert update.status == "True"


def test_recovery_tested_false_does_not_stall_the_policy() -> None:
    """Informational, as RPOMet: kstatus reads Ready."""
    conditions = set_conditions(
        None,
        [ConditionUpdate("Ready", "True", "Scheduled", "ok"), recovery_tested(None, WEEK, PASSED)],
        generation=1,
        now=PASSED,
    )
    # No Stalled, no Reconciling: the policy stays Current for Flux and kubectl wait.
    assert {c["type"] for c in conditions} == {"RecoveryTested", "Ready"}


def test_the_policy_patch_of_a_run_clears_what_an_earlier_run_left_and_keeps_the_pass() -> None:
    passed = policy_drill("nightly", {
        "completionTime": "2026-03-02T04:00:00Z", "result": "Passed", "reason": "DrillPassed",
        "rtoSeconds": 12.5, "rpoSeconds": 30.0, "recoveryPoint": "orders-1",
    })
    assert passed["lastPassedTime"] == "2026-03-02T04:00:00Z"
    assert passed["lastPassedDrill"] == "nightly"
    failed = policy_drill("nightly", {
        "completionTime": "2026-03-03T04:00:00Z", "result": "Failed", "reason": "JobMissing",
    })
    # A merge patch: None removes the earlier run's RTO; the pass fields are left alone.
    assert failed["rtoSeconds"] is None and failed["recoveryPoint"] is None
    assert "lastPassedTime" not in failed and "lastPassedDrill" not in failed
