"""The decision table: when a FailoverPlan fails over, asks for approval, or refuses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from aegis.api.failoverplan import (
    CheckStatus,
    FailoverPlanSpec,
    FailoverPlanStatus,
    SiteStatus,
    Transition,
)
from aegis.reconcilers.failover import APPROVE, FAILBACK, FAILOVER, decide, parse_trigger

NOW = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)
CHECK = [{"name": "web", "tcp": {"host": "h", "port": 1}}]
STEP = {"name": "dns", "webhook": {"url": "http://hook"}}


def spec(**kw: Any) -> FailoverPlanSpec:
    body = {
        "mode": "Automatic",
        "primary": {"name": "eu", "checks": CHECK, "failureThreshold": 3},
        "secondary": {"name": "us", "checks": CHECK},
        "steps": [STEP],
        "cooldownSeconds": 600,
        **kw,
    }
    return FailoverPlanSpec.model_validate(body)


def up() -> SiteStatus:
    return SiteStatus(healthy=True, consecutive_successes=5,
                      checks=[CheckStatus(name="web", ok=True)])


def down(since: dt.datetime = NOW - dt.timedelta(seconds=30)) -> SiteStatus:
    return SiteStatus(healthy=False, consecutive_failures=3, first_failure_time=since,
                      down_since=since, checks=[CheckStatus(name="web", ok=False,
                                                            message="connection refused")])


def status(primary: SiteStatus | None, secondary: SiteStatus | None, **kw: Any
           ) -> FailoverPlanStatus:
    sites = {k: v for k, v in (("primary", primary), ("secondary", secondary)) if v}
    return FailoverPlanStatus(sites=sites, state=kw.pop("state", "Monitoring"),
                              active_site=kw.pop("active_site", "primary"), **kw)


def test_primary_down_secondary_up_automatic_starts_failover() -> None:
    d = decide(spec(), status(down(), up()), {}, NOW)
    assert d.action == "start_failover"
    assert d.detected_time == NOW - dt.timedelta(seconds=30)
    assert d.transition_reason is not None and "connection refused" in d.transition_reason
    assert d.consume == ()
    assert [e.reason for e in d.events] == ["FailoverStarted"]


def test_healthy_primary_means_nothing() -> None:
    d = decide(spec(), status(up(), up()), {}, NOW)
    assert (d.action, d.reason, d.recommended) == ("none", "PrimaryHealthy", False)


def test_below_threshold_blip_means_nothing() -> None:
    blip = up().model_copy(update={"consecutive_failures": 2})
    d = decide(spec(), status(blip, up()), {}, NOW)
    assert (d.action, d.reason) == ("none", "BelowThreshold")
    assert "2/3" in d.message


def test_unprobed_primary_means_nothing() -> None:
    d = decide(spec(), status(None, up()), {}, NOW)
    assert (d.action, d.reason) == ("none", "PrimaryUnknown")


@pytest.mark.parametrize("secondary", [down(), None, SiteStatus(healthy=None)])
def test_no_failover_onto_a_sick_or_unknown_secondary(secondary: SiteStatus | None) -> None:
    d = decide(spec(), status(down(), secondary), {}, NOW)
    assert (d.action, d.reason) == ("none", "SecondaryUnhealthy")
    assert "no failover" in d.message


def test_secondary_condition_names_the_failing_check() -> None:
    d = decide(spec(), status(down(), down()), {}, NOW)
    assert "web: connection refused" in d.message


def test_no_failover_inside_cooldown_of_the_last_failover() -> None:
    last = Transition(kind="Failover", start_time=NOW - dt.timedelta(seconds=300),
                      result="Succeeded")
    back = Transition(kind="Failback", start_time=NOW - dt.timedelta(seconds=60),
                      result="Succeeded")
    st = status(down(), up(), last_transition=back, history=[last])
    d = decide(spec(), st, {}, NOW)
    assert (d.action, d.reason) == ("none", "InCooldown")
    assert "2025-01-01T12:05:00Z" in d.message
    later = decide(spec(), st, {}, NOW + dt.timedelta(seconds=301))
    assert later.action == "start_failover"


def test_already_failed_over_means_nothing() -> None:
    st = status(down(), up(), state="FailedOver", active_site="secondary")
    d = decide(spec(), st, {}, NOW)
    assert (d.action, d.reason) == ("none", "AlreadyFailedOver")


def test_manual_mode_recommends_with_a_fresh_token() -> None:
    d = decide(spec(mode="Manual"), status(down(), up()), {}, NOW)
    assert (d.action, d.reason, d.recommended) == ("recommend", "AwaitingApproval", True)
    assert d.condition.status == "True"
    assert d.approval_token and len(d.approval_token) >= 16
    assert [e.type for e in d.events] == ["Warning"]
    other = decide(spec(mode="Manual"), status(down(), up()), {}, NOW)
    assert other.approval_token != d.approval_token


def test_approval_required_recommends_even_in_automatic_mode() -> None:
    d = decide(spec(approval={"required": True}), status(down(), up()), {}, NOW)
    assert d.action == "recommend"


def awaiting(token: str = "tok-123") -> FailoverPlanStatus:
    return status(down(), up(), state="AwaitingApproval", approval_token=token)


def test_awaiting_keeps_its_token_and_emits_no_new_event() -> None:
    d = decide(spec(mode="Manual"), awaiting(), {}, NOW)
    assert (d.action, d.approval_token, d.events) == ("none", "tok-123", ())


def test_wrong_token_is_refused_with_an_event_and_the_wait_goes_on() -> None:
    d = decide(spec(mode="Manual"), awaiting(), {APPROVE: "guess"}, NOW)
    assert d.action == "none" and d.reason == "AwaitingApproval"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "ApprovalRefused")]
    assert "guess" not in d.events[0].message
    assert d.consume == (APPROVE,)


def test_right_token_starts_the_failover() -> None:
    d = decide(spec(mode="Manual"), awaiting(), {APPROVE: " tok-123 "}, NOW)
    assert d.action == "start_failover"
    assert d.transition_reason is not None and d.transition_reason.startswith("Approved")
    assert d.consume == (APPROVE,)


def test_approval_without_a_recommendation_is_refused() -> None:
    d = decide(spec(mode="Manual"), status(up(), up()), {APPROVE: "tok"}, NOW)
    assert d.action == "none"
    assert [e.reason for e in d.events] == ["NothingToApprove"]


def test_recommendation_is_withdrawn_when_the_primary_recovers() -> None:
    st = awaiting().model_copy(update={"sites": {"primary": up(), "secondary": up()}})
    d = decide(spec(mode="Manual"), st, {}, NOW)
    assert (d.action, d.reason, d.recommended) == ("withdraw", "PrimaryHealthy", False)
    assert [e.reason for e in d.events] == ["RecommendationWithdrawn"]


def test_manual_trigger_fails_over_a_healthy_primary_and_skips_cooldown() -> None:
    recent = Transition(kind="Failover", start_time=NOW - dt.timedelta(seconds=10))
    st = status(up(), up(), last_transition=recent)
    d = decide(spec(mode="Manual"), st, {FAILOVER: "maintenance"}, NOW)
    assert d.action == "start_failover"
    assert d.transition_reason == "Manual: maintenance"
    assert d.consume == (FAILOVER,)


def test_manual_trigger_refuses_a_sick_secondary_unless_forced() -> None:
    refused = decide(spec(), status(down(), down()), {FAILOVER: "dc fire"}, NOW)
    assert refused.action == "none"
    assert [e.reason for e in refused.events] == ["SecondaryUnhealthy"]
    assert "force:" in refused.events[0].message
    forced = decide(spec(), status(down(), down()), {FAILOVER: "force: dc fire"}, NOW)
    assert forced.action == "start_failover"
    assert forced.transition_reason == "Manual: dc fire (forced)"


def test_manual_trigger_when_already_failed_over_is_refused() -> None:
    st = status(down(), up(), state="FailedOver", active_site="secondary")
    d = decide(spec(), st, {FAILOVER: "again"}, NOW)
    assert d.action == "none" and [e.reason for e in d.events] == ["AlreadyFailedOver"]


def test_failback_needs_a_healthy_primary() -> None:
    st = status(down(), up(), state="FailedOver", active_site="secondary")
    refused = decide(spec(), st, {FAILBACK: "done"}, NOW)
    assert refused.action == "none"
    assert [e.reason for e in refused.events] == ["PrimaryUnhealthy"]
    healthy = st.model_copy(update={"sites": {"primary": up(), "secondary": up()}})
    ok = decide(spec(), healthy, {FAILBACK: "done"}, NOW)
    assert (ok.action, ok.transition_reason, ok.consume) == (
        "start_failback", "Manual: done", (FAILBACK,))


def test_failback_when_not_failed_over_is_refused() -> None:
    d = decide(spec(), status(up(), up()), {FAILBACK: "x"}, NOW)
    assert [e.reason for e in d.events] == ["NotFailedOver"]


def test_a_running_transition_continues_and_triggers_are_ignored() -> None:
    st = status(down(), up(), state="FailingOver")
    d = decide(spec(), st, {FAILOVER: "x", APPROVE: "y"}, NOW)
    assert d.action == "continue"
    assert set(d.consume) == {FAILOVER, APPROVE}


def test_a_failed_failover_waits_for_a_human_and_can_be_retried() -> None:
    failed = Transition(kind="Failover", start_time=NOW - dt.timedelta(seconds=5),
                        result="Failed")
    st = status(down(), up(), state="Failed", last_transition=failed)
    auto = decide(spec(), st, {}, NOW)
    assert (auto.action, auto.reason) == ("none", "LastFailoverFailed")
    retry = decide(spec(), st, {FAILOVER: "retry"}, NOW)
    assert (retry.action, retry.resume) == ("start_failover", True)
    rollback = decide(spec(), st.model_copy(update={"sites": {"primary": up(),
                                                              "secondary": up()}}),
                      {FAILBACK: "undo"}, NOW)
    assert (rollback.action, rollback.resume) == ("start_failback", False)


def test_parse_trigger() -> None:
    assert parse_trigger("force") == ("forced by annotation", True)
    assert parse_trigger("FORCE:dc down") == ("dc down", True)
    assert parse_trigger("planned") == ("planned", False)
    assert parse_trigger("") == ("requested by annotation", False)


def test_flapping_primary_never_fails_over_but_a_real_outage_does() -> None:
    from aegis.probes import CheckResult, SiteProbe
    from aegis.reconcilers.failover import next_site_status

    plan = spec()
    primary: SiteStatus | None = None
    actions = []
    for i, c in enumerate("SS" + "FFS" * 20 + "FFF"):
        at = NOW + dt.timedelta(seconds=i)
        probe = SiteProbe("eu", at, (CheckResult("web", c == "S", 1.0, c),))
        primary = next_site_status(plan.primary, primary, probe)
        actions.append(decide(plan, status(primary, up()), {}, at).action)
    assert set(actions[:-1]) == {"none"}
    assert actions[-1] == "start_failover"
