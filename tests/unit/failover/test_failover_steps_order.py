"""Step ordering, failure handling and resumption after a restart."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aegis.api.failoverplan import FailoverPlanSpec, FailoverPlanStatus, Step, Transition
from aegis.reconcilers.failover import (
    PREVIOUS_RECORD,
    RestoreRoute53,
    begin_transition,
    end_transition,
    exhausted,
    failback_plan,
    finish_transition,
    mark_finished,
    mark_running,
    mark_skipped,
    new_transition,
    plan_steps,
    progress,
    save_outputs,
    step_status,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def step(name: str, **kw: Any) -> Step:
    return Step.model_validate({"name": name, "webhook": {"url": "http://h"}, **kw})


def route53(name: str) -> Step:
    return Step.model_validate({"name": name, "route53": {
        "hostedZoneId": "Z1", "recordName": "db.example.com", "type": "A", "values": ["2.2.2.2"],
    }})


def drive(
    planned: list[Any], t: Transition, outcomes: dict[str, bool]
) -> tuple[Transition, list[str]]:
    """Run waves like the runner does, with fixed outcomes; returns the order of starts."""
    started: list[str] = []
    clock = 0.0
    while True:
        p = progress(planned, t.steps)
        if p.skip:
            t = mark_skipped(t, p.skip, "not run")
            continue
        wave = [*p.running, *p.runnable]
        if not wave:
            return finish_transition(t, p.result or "Failed", at(clock)), started
        for name in wave:
            t = mark_running(t, name, at(clock))
            started.append(name)
        clock += 1
        for name in wave:
            t = mark_finished(t, name, outcomes.get(name, True), "done", at(clock))


def test_absent_depends_on_means_the_previous_step() -> None:
    planned = plan_steps([step("a"), step("b"), step("c", dependsOn=[]), step("d",
                                                                             dependsOn=["a"])])
    assert [p.depends_on for p in planned] == [(), ("a",), (), ("a",)]
    first = progress(planned, None)
    assert first.runnable == ("a", "c")
    assert not first.finished


def test_sequential_run_in_order() -> None:
    planned = plan_steps([step("a"), step("b"), step("c")])
    t = new_transition("Failover", "test", planned, at(0))
    t, started = drive(planned, t, {})
    assert started == ["a", "b", "c"]
    assert t.result == "Succeeded"
    assert [s.state for s in t.steps or []] == ["Succeeded"] * 3
    assert t.duration_seconds == 3.0 and t.completion_time == at(3)


def test_a_failed_step_stops_the_procedure_and_skips_the_rest() -> None:
    planned = plan_steps([step("a"), step("b"), step("c", dependsOn=[]), step("d")])
    t = new_transition("Failover", "test", planned, at(0))
    t, started = drive(planned, t, {"a": False})
    # a and c start together; a fails, so nothing new starts, even d's independent branch
    assert started == ["a", "c"]
    assert t.result == "Failed"
    states = {s.name: (s.state, s.message) for s in t.steps or []}
    assert states["b"] == ("Skipped", "not run") and states["d"][0] == "Skipped"
    assert states["c"][0] == "Succeeded"


def test_continue_on_error_lets_dependents_run_and_the_procedure_succeed() -> None:
    planned = plan_steps([step("a", continueOnError=True), step("b")])
    t = new_transition("Failover", "test", planned, at(0))
    t, started = drive(planned, t, {"a": False})
    assert started == ["a", "b"]
    assert t.result == "Succeeded"
    assert step_status(t, "a").state == "Failed"


def test_dependents_of_a_skipped_step_are_skipped_too() -> None:
    planned = plan_steps([step("a"), step("b"), step("c", dependsOn=["b"], continueOnError=True)])
    statuses = new_transition("Failover", "t", planned, at(0))
    statuses = mark_finished(mark_running(statuses, "a", at(0)), "a", False, "x", at(1))
    p = progress(planned, statuses.steps)
    assert p.skip == ("b", "c") and p.finished and p.result == "Failed"


def test_resume_after_restart_reruns_the_interrupted_step_and_never_a_finished_one() -> None:
    planned = plan_steps([step("promote"), step("dns"), step("notify")])
    t = new_transition("Failover", "test", planned, at(0))
    t = mark_running(t, "promote", at(0))
    t = mark_finished(t, "promote", True, "promoted", at(1), {"lagBytes": "0"})
    t = mark_running(t, "dns", at(1))
    t = save_outputs(t, "dns", {PREVIOUS_RECORD: "{}"})
    # ... the operator dies here; a new one reads `t` back from status
    p = progress(planned, t.steps)
    assert p.running == ("dns",) and p.runnable == ()
    t2, started = drive(planned, t, {})
    assert started == ["dns", "notify"]
    dns = step_status(t2, "dns")
    assert dns.attempts == 2 and dns.start_time == at(1)
    assert dns.outputs == {PREVIOUS_RECORD: "{}"}
    assert step_status(t2, "promote").attempts == 1
    assert t2.result == "Succeeded"


def test_a_step_interrupted_too_often_is_not_started_again() -> None:
    planned = plan_steps([step("x"), route53("y")])
    t = new_transition("Failover", "test", planned, at(0))
    for _ in range(2):
        t = mark_running(t, "x", at(0))
    assert exhausted(t, planned[0])  # a webhook is re-sent at most once
    for _ in range(2):
        t = mark_running(t, "y", at(0))
    assert not exhausted(t, planned[1])
    t = mark_running(t, "y", at(0))
    assert exhausted(t, planned[1])


def test_retry_of_a_failed_transition_keeps_succeeded_steps_and_outputs() -> None:
    planned = plan_steps([step("promote"), route53("dns")])
    t = new_transition("Failover", "down", planned, at(0))
    t = mark_finished(mark_running(t, "promote", at(0)), "promote", True, "ok", at(1))
    t = mark_running(t, "dns", at(1))
    t = mark_finished(t, "dns", False, "timeout", at(5), {PREVIOUS_RECORD: "old"})
    t = finish_transition(t, "Failed", at(5))
    retry = new_transition("Failover", "retry", planned, at(60), resume_from=t)
    assert retry.id == t.id and retry.start_time == at(0)
    assert [s.state for s in retry.steps or []] == ["Succeeded", "Pending"]
    assert step_status(retry, "dns").outputs == {PREVIOUS_RECORD: "old"}
    assert step_status(retry, "dns").attempts is None
    assert progress(planned, retry.steps).runnable == ("dns",)


def test_transition_measurements_and_status_lifecycle() -> None:
    planned = plan_steps([step("promote"), step("dns")])
    t = new_transition("Failover", "down", planned, at(10), detected_time=at(2))
    assert t.id == "failover-20250101000010"
    t = mark_finished(mark_running(t, "promote", at(10)), "promote", True, "ok", at(11),
                      {"lagBytes": "4096", "lagSeconds": "0.250"})
    t = mark_finished(mark_running(t, "dns", at(11)), "dns", True, "ok", at(13))
    t = finish_transition(t, "Succeeded", at(13))
    assert (t.lag_bytes, t.rpo_seconds, t.duration_seconds) == (4096, 0.25, 3.0)
    assert t.detected_time == at(2)

    old = Transition(kind="Failback", id="failback-1", start_time=at(0))
    st = FailoverPlanStatus(state="AwaitingApproval", approval_token="tok", last_transition=old,
                            active_site="primary")
    running = begin_transition(st, t, history_limit=10)
    assert (running.state, running.approval_token) == ("FailingOver", None)
    assert running.history == [old]
    done = end_transition(running, t)
    assert (done.state, done.active_site) == ("FailedOver", "secondary")
    failed = end_transition(running, t.model_copy(update={"result": "Failed"}))
    assert (failed.state, failed.active_site) == ("Failed", "primary")
    assert begin_transition(st, t, history_limit=0).history is None


def test_default_failback_restores_every_recorded_route53_change_newest_first() -> None:
    spec = FailoverPlanSpec.model_validate({
        "primary": {"name": "eu", "checks": [{"name": "c", "tcp": {"host": "h", "port": 1}}]},
        "secondary": {"name": "us", "checks": [{"name": "c", "tcp": {"host": "h", "port": 1}}]},
        "steps": [route53("dns-a").to_api(), step("hook").to_api(), route53("dns-b").to_api(),
                  route53("dns-c").to_api()],
    })
    planned = plan_steps(spec.steps)
    t = new_transition("Failover", "down", planned, at(0))
    t = save_outputs(t, "dns-a", {PREVIOUS_RECORD: "A"})
    t = save_outputs(t, "dns-b", {PREVIOUS_RECORD: "B"})  # dns-c never ran: nothing to undo
    status = FailoverPlanStatus(last_transition=t)
    back = failback_plan(spec, status)
    assert [p.name for p in back] == ["restore-dns-b", "restore-dns-a"]
    assert back[1].depends_on == ("restore-dns-b",)
    assert all(isinstance(p.action, RestoreRoute53) for p in back)
    assert [p.action.previous for p in back if isinstance(p.action, RestoreRoute53)] == ["B", "A"]
    explicit = spec.model_copy(update={"failback_steps": [step("undo")]})
    assert [p.name for p in failback_plan(explicit, status)] == ["undo"]
