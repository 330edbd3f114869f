"""Live failover drill logic against an in-memory plan (a fake of the LivePorts): what it
triggers, what it waits for, and which verdict the plan's measurements give."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aegis.api.drdrill import DrillObjectives, FailoverDrill
from aegis.api.failoverplan import FailoverPlanSpec
from aegis.reconcilers.failover_live import LivePorts, run_live

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
PG = {"host": "db", "database": "postgres", "userSecretRef": {"name": "pg", "key": "u"},
      "passwordSecretRef": {"name": "pg", "key": "p"}}


def plan_spec(mode: str = "Automatic", promote: bool = False) -> FailoverPlanSpec:
    site = {"checks": [{"name": "tcp", "tcp": {"host": "db", "port": 5432}}]}
    step = ({"name": "promote", "postgresPromote": {"target": PG}} if promote else
            {"name": "switchover", "postgresSwitchover": {"target": PG, "primary": PG}})
    return FailoverPlanSpec.model_validate({
        "mode": mode, "primary": {"name": "eu", **site}, "secondary": {"name": "us", **site},
        "steps": [step],
        "failbackSteps": [{"name": "back", "postgresSwitchover": {"target": PG, "primary": PG}}],
    })


def iso(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat()


class FakePlan:
    """A plan that runs a transition when triggered, with the given measurements."""

    def __init__(self, failover: dict[str, Any], failback_ok: bool = True,
                 reattached_after: float = 0.0) -> None:
        self.now = 0.0
        self.failover, self.failback_ok = failover, failback_ok
        self.reattached_after = reattached_after
        self.failed_over_at: float | None = None
        self.annotations: dict[str, str] = {}
        self.triggered: list[str] = []
        self.drill: dict[str, str] = {}
        self.progress: list[dict[str, Any]] = []
        healthy = {"healthy": True}
        self.status: dict[str, Any] = {"state": "Monitoring", "activeSite": "primary",
                                       "sites": {"primary": healthy, "secondary": healthy}}

    def read(self) -> dict[str, Any]:
        if self.failed_over_at is not None and \
                self.now - self.failed_over_at >= self.reattached_after:
            self.status["sites"]["primary"] = {"healthy": False, "replication": {
                "kind": "postgres", "role": "replica", "stale": False}}
        return {"metadata": {"annotations": dict(self.annotations)}, "status": self.status}

    def annotate(self, annotations: dict[str, str]) -> None:
        self.triggered.extend(annotations)
        if "dr.aegis.dev/failover" in annotations:
            self.status.update(state="FailedOver", activeSite="secondary", lastTransition={
                "kind": "Failover", "id": "t1", "result": "Succeeded", **self.failover})
            self.failed_over_at = self.now
        else:
            ok = self.failback_ok
            self.status.update(
                state="Monitoring" if ok else "Failed",
                activeSite="primary" if ok else "secondary",
                lastTransition={"kind": "Failback", "id": "t2", "lagBytes": 0,
                                "result": "Succeeded" if ok else "Failed",
                                "steps": [{"name": "back", "state": "Succeeded" if ok
                                           else "Failed", "message": "fenced; not caught up"}]})

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def ports(self) -> LivePorts:
        return LivePorts(read_plan=self.read, annotate_plan=self.annotate,
                         drill_annotations=lambda: self.drill, progress=self.progress.append,
                         monotonic=lambda: self.now, wall=lambda: T0, sleep=self.sleep,
                         new_token=lambda: "tok")


SWITCHOVER = {"lagBytes": 0, "writeOutageSeconds": 0.25, "steps": [
    {"name": "switchover", "state": "Succeeded", "startTime": iso(0), "completionTime": iso(1),
     "outputs": {"lagBytes": "0", "writeOutageSeconds": "0.25"}}]}


def drill(**extra: Any) -> FailoverDrill:
    return FailoverDrill.model_validate({"planRef": {"name": "orders"}, "mode": "Live",
                                         "approvalTimeoutSeconds": 5,
                                         "failbackReadyTimeoutSeconds": 10, **extra})


def live(plan: FakePlan, spec: FailoverPlanSpec | None = None,
         objectives: DrillObjectives | None = None) -> Any:
    return run_live({"plan": "orders"}, spec or plan_spec(), drill(), "shop", "orders", "live",
                    objectives, plan.ports())


def test_switchover_round_trip_passes_with_the_plan_measurements() -> None:
    plan = FakePlan(SWITCHOVER, reattached_after=3)
    outcome = live(plan)
    assert outcome.passed, outcome.message
    assert plan.triggered == ["dr.aegis.dev/failover", "dr.aegis.dev/failback"]
    record = outcome.record
    assert record["dataLostBytes"] == 0 and record["rtoSeconds"] == 0.25
    assert record["writeOutageSource"] == "switchoverStep" and record["rtoPredicted"] is False
    assert record["transitions"] == ["t1", "t2"]
    assert record["phases"]["failbackReadySeconds"] >= 3
    assert [s["name"] for s in record["steps"]] == ["failover/switchover", "failback/back"]


def test_bytes_lost_fail_the_drill_after_failing_back() -> None:
    plan = FakePlan({**SWITCHOVER, "lagBytes": 4096})
    outcome = live(plan)
    assert not outcome.passed and outcome.reason == "DataLost"
    assert "4096 bytes" in outcome.message
    assert plan.status["activeSite"] == "primary"  # it still failed back


def test_an_unmeasured_outage_never_passes() -> None:
    outcome = live(FakePlan({"lagBytes": 0, "steps": []}))
    assert not outcome.passed and outcome.reason == "NotMeasured"
    assert "rtoSeconds" not in outcome.record


def test_promote_outage_comes_from_the_step_timings_and_meets_the_objective_or_not() -> None:
    promoted = {"lagBytes": 0, "steps": [{"name": "promote", "state": "Succeeded",
                                          "startTime": iso(0), "completionTime": iso(2.5)}]}
    outcome = live(FakePlan(promoted), plan_spec(promote=True), DrillObjectives(rto_seconds=2))
    assert outcome.record["writeOutageSource"] == "promoteStepTimings"
    assert outcome.record["rtoSeconds"] == 2.5
    assert not outcome.passed and outcome.reason == "RTOObjectiveMissed"


def test_failback_failure_is_reported_first() -> None:
    outcome = live(FakePlan({**SWITCHOVER, "lagBytes": 1}, failback_ok=False))
    assert not outcome.passed and outcome.reason == "FailbackFailed"
    assert "DataLost" not in outcome.reason and "1 bytes" in outcome.message


def test_never_reattached_old_primary_fails_back_never_and_says_so() -> None:
    outcome = live(FakePlan(SWITCHOVER, reattached_after=1e9))
    assert outcome.reason == "FailbackFailed"
    assert "stays failed over" in outcome.message and "kubectl aegis failover failback" in \
        outcome.message


def test_manual_plan_waits_for_the_token_on_the_drill() -> None:
    plan = FakePlan(SWITCHOVER)
    original = plan.sleep

    def sleep(seconds: float) -> None:
        original(seconds)
        if plan.now >= 2:
            plan.drill["dr.aegis.dev/approve"] = "tok"

    plan.sleep = sleep  # type: ignore[method-assign]
    outcome = live(plan, plan_spec("Manual"))
    assert outcome.passed, outcome.message
    assert outcome.record["phases"]["approvalSeconds"] >= 2
    assert any(p.get("reason") == "AwaitingApproval" and p.get("approvalToken") == "tok"
               for p in plan.progress)
    assert "approvalToken" not in outcome.record


def test_a_busy_or_sick_plan_is_not_touched() -> None:
    plan = FakePlan(SWITCHOVER)
    plan.status["sites"]["secondary"] = {"healthy": False}
    outcome = live(plan)
    assert outcome.reason == "SecondaryUnhealthy" and plan.triggered == []
    assert plan.status["state"] == "Monitoring"
