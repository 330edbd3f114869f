"""Restore drills, the pure parts: when a drill runs, how a run is judged, where its
evidence goes, which PostgreSQL a scratch server uses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from aegis.agent.errors import AgentError
from aegis.agent.layout import LayoutError, drill_evidence_key
from aegis.agent.scratch import postgres_server_dir
from aegis.api.drdrill import DRDrillSpec, DrillObjectives
from aegis.reconcilers.drdrill import (
    decide,
    judge,
    point_verified,
    refused_run,
    scheduled_decision,
    with_history,
)

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 3, 59, 58, tzinfo=UTC)


def spec(**extra: Any) -> DRDrillSpec:
    return DRDrillSpec.model_validate(
        {"type": "Restore", "restore": {"policyRef": {"name": "orders"}}, **extra}
    )


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- when a drill runs -------------------------------------------------------------------------


def test_a_scheduled_drill_waits_for_its_first_tick_after_creation() -> None:
    decision = scheduled_decision("0 4 * * *", "UTC", since=T0 - dt.timedelta(hours=1), now=T0)
    assert decision.trigger is None
    assert decision.next_run_time == at("2026-03-02T04:00:00")
    assert decision.requeue_after == pytest.approx(2.0)


def test_a_due_tick_runs_and_older_unhandled_ticks_count_as_missed() -> None:
    since = at("2026-02-27T05:00:00")
    decision = scheduled_decision("0 4 * * *", "UTC", since=since, now=at("2026-03-02T04:00:01"))
    assert decision.trigger == "Scheduled"
    assert decision.scheduled == at("2026-03-02T04:00:00")
    assert decision.handled_until == decision.scheduled
    assert decision.missed == 2  # Feb 28 and Mar 1
    assert decision.next_run_time == at("2026-03-03T04:00:00")


def test_schedule_ticks_follow_the_time_zone_like_a_policys() -> None:
    # 04:00 Berlin is 03:00 UTC in winter and 02:00 UTC after the spring change.
    winter = scheduled_decision("0 4 * * *", "Europe/Berlin", since=T0, now=T0)
    assert winter.next_run_time == at("2026-03-03T03:00:00")
    summer_now = at("2026-03-30T00:00:00")
    summer = scheduled_decision("0 4 * * *", "Europe/Berlin", since=summer_now, now=summer_now)
    assert summer.next_run_time == at("2026-03-30T02:00:00")


def test_a_drill_without_schedule_runs_once() -> None:
    once = spec()
    assert decide(once, "ns", "d", {}, T0, None, T0).trigger == "Once"
    assert decide(once, "ns", "d", {"lastRun": {"result": "Passed"}}, T0, None, T0).trigger is None


def test_a_new_run_request_runs_now_and_an_old_one_does_not() -> None:
    weekly = spec(schedule="0 4 * * 1")
    status = {"lastRun": {"result": "Passed"}, "lastRunRequest": "a"}
    new = decide(weekly, "ns", "d", status, T0, "b", T0)
    assert new.trigger == "Manual" and new.request == "b"
    assert new.next_run_time is not None  # the schedule still says when the next tick is
    assert decide(weekly, "ns", "d", status, T0, "a", T0).trigger is None


# --- how a run is judged -----------------------------------------------------------------------

START = at("2026-03-02T04:00:00.250000")
RUN = {
    "startTime": "2026-03-02T04:00:00.250000Z",
    "recoveryPoint": "orders-20260302030000",
    "sourceTime": "2026-03-02T03:00:05Z",
}


def agent_result(**extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ok": True,
        "agentStartTime": "2026-03-02T04:00:02.250000Z",
        "checksEndTime": "2026-03-02T04:00:12.750000Z",
        "phases": {
            "scratchSeconds": 1.0,
            "downloadAuthenticateSeconds": 2.5,
            "restoreSeconds": 6.0,
            "checksSeconds": 0.5,
        },
        "checks": [{"name": "rows", "result": "Passed", "value": 42}],
    }
    result.update(extra)
    return result


ENDED = at("2026-03-02T04:00:14")


def test_a_passed_run_measures_rto_rpo_and_each_phase() -> None:
    verdict = judge(dict(RUN), "Complete", agent_result(), None, None, ENDED)
    assert verdict.passed and verdict.reason == "DrillPassed"
    run = verdict.run
    assert run["result"] == "Passed"
    assert run["rtoSeconds"] == 12.5  # run start to the checks passing
    assert run["rpoSeconds"] == 3595.25  # run start minus the point's source time
    assert run["phases"]["queuedSeconds"] == 2.0
    assert run["checks"] == [{"name": "rows", "result": "Passed", "value": "42"}]
    assert "RTO 12.5s" in verdict.message


def test_an_rto_above_the_objective_fails_the_run_with_its_reason() -> None:
    objectives = DrillObjectives(rto_seconds=10)
    verdict = judge(dict(RUN), "Complete", agent_result(), None, objectives, ENDED)
    assert not verdict.passed and verdict.reason == "RTOObjectiveMissed"
    assert "RTO 12.5s > objective 10s" in verdict.message
    assert verdict.run["rtoSeconds"] == 12.5  # still measured and shown


def test_an_rpo_above_the_objective_fails_the_run() -> None:
    objectives = DrillObjectives(rto_seconds=60, rpo_seconds=3600 - 60)
    verdict = judge(dict(RUN), "Complete", agent_result(), None, objectives, ENDED)
    assert verdict.reason == "RPOObjectiveMissed" and not verdict.passed


def test_a_failed_check_is_named() -> None:
    result = agent_result(
        ok=False,
        kind="CheckFailed",
        checks=[{"name": "rows", "result": "Failed", "value": "0", "message": "expected >= 1"}],
    )
    verdict = judge(dict(RUN), "Failed", result, None, None, ENDED)
    assert verdict.reason == "CheckFailed"
    assert "check rows failed: expected >= 1" in verdict.message


def test_an_authentication_failure_is_a_corrupted_point_named_in_the_message() -> None:
    result = {"ok": False, "kind": "Corrupted", "reason": "s3://b/k/payload is damaged: tag"}
    verdict = judge(dict(RUN), "Failed", result, None, None, ENDED)
    assert verdict.reason == "PointCorrupted"
    assert "RecoveryPoint orders-20260302030000 is corrupted" in verdict.message


def test_a_successful_job_without_measurements_claims_nothing() -> None:
    verdict = judge(dict(RUN), "Complete", None, None, None, ENDED)
    assert not verdict.passed and verdict.reason == "ResultMissing"


def test_a_missing_job_fails_the_run() -> None:
    verdict = judge(dict(RUN), "Missing", None, "gone", None, ENDED)
    assert verdict.reason == "JobMissing" and verdict.run["result"] == "Failed"


def test_a_run_refused_for_a_corrupted_point_says_point_corrupted() -> None:
    verdict = refused_run({"startTime": "x"}, "RecoveryPointCorrupted", "RP x is Corrupted", ENDED)
    assert verdict.reason == "PointCorrupted" and not verdict.passed


def test_what_a_run_proves_about_its_point() -> None:
    passed = judge(dict(RUN), "Complete", agent_result(), None, None, ENDED)
    slow = judge(dict(RUN), "Complete", agent_result(), None, DrillObjectives(rto_seconds=1), ENDED)
    corrupted = judge(dict(RUN), "Failed", {"ok": False, "kind": "Corrupted"}, None, None, ENDED)
    missing = judge(dict(RUN), "Missing", None, None, None, ENDED)
    assert point_verified(passed, True) is True
    assert point_verified(slow, True) is True  # restored and checked: only the drill missed
    assert point_verified(corrupted, True) is False
    assert point_verified(missing, False) is None
    refused = refused_run({}, "RecoveryPointCorrupted", "already Corrupted", ENDED)
    assert point_verified(refused, False) is None  # nothing was read this time


def test_history_is_newest_first_and_bounded() -> None:
    history = [{"startTime": str(i)} for i in range(5)]
    kept = with_history(history, {"startTime": "new"}, 3)
    assert [r["startTime"] for r in kept] == ["new", "0", "1"]
    assert with_history(history, {"startTime": "0"}, 10)[0] == {"startTime": "0"}
    assert len(with_history(history, {"startTime": "0"}, 10)) == 5
    assert with_history(history, {"startTime": "n"}, 0) == []


# --- where evidence goes, which server binaries ------------------------------------------------


def test_evidence_lives_beside_the_policys_points_where_no_point_can_be() -> None:
    key = drill_evidence_key("/backups/", "shop", "orders", "weekly", "20260302040000")
    assert key == "backups/shop/orders/_drills/weekly/20260302040000.json"
    with pytest.raises(LayoutError):
        drill_evidence_key("", "shop", "orders", "../x", "1")


def _fake_server(lib: Path, major: int) -> None:
    bin_dir = lib / str(major) / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("initdb", "postgres"):
        (bin_dir / tool).write_text("")


def test_scratch_postgres_is_the_points_major_or_the_oldest_newer_one(tmp_path: Path) -> None:
    for major in (13, 15, 17):
        _fake_server(tmp_path, major)
    (tmp_path / "16" / "bin").mkdir(parents=True)  # clients only: not a server
    assert postgres_server_dir(15, tmp_path) == tmp_path / "15" / "bin"
    assert postgres_server_dir(14, tmp_path) == tmp_path / "15" / "bin"
    assert postgres_server_dir(16, tmp_path) == tmp_path / "17" / "bin"
    with pytest.raises(AgentError, match="no PostgreSQL server 18 or newer") as error:
        postgres_server_dir(18, tmp_path)
    assert error.value.kind == "ScratchUnavailable"
