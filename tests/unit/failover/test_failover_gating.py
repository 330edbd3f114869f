"""Replication gating as pure functions: lag from the two sites' observations, staleness,
and the decisions that protect data (issue 13)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aegis.api.failoverplan import (
    CheckStatus,
    FailoverPlanSpec,
    FailoverPlanStatus,
    SiteReplication,
    SiteStatus,
)
from aegis.probes.base import CheckResult, Replication
from aegis.probes.prober import SiteProbe
from aegis.reconcilers.failover import (
    ACCEPT_DATA_LOSS,
    APPROVE,
    FAILBACK,
    FAILOVER,
    approval_outcome,
    approval_triggers,
    decide,
    next_replication,
    pending_approval,
    replica_lag,
)

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
CHECK = [{"name": "db", "tcp": {"host": "h", "port": 1}}]
MIB = 1024 * 1024


def spec(**kw: Any) -> FailoverPlanSpec:
    return FailoverPlanSpec.model_validate({
        "mode": "Automatic",
        "primary": {"name": "eu", "checks": CHECK},
        "secondary": {"name": "us", "checks": CHECK},
        "steps": [{"name": "promote", "postgresPromote": {"target": {
            "host": "h", "database": "d", "userSecretRef": {"name": "s", "key": "u"},
            "passwordSecretRef": {"name": "s", "key": "p"}}}}],
        **kw,
    })


def primary_at(position: int, at: dt.datetime) -> SiteReplication:
    return SiteReplication(kind="postgres", role="primary", position=position, position_time=at)


def replica_at(position: int, at: dt.datetime, complete: dt.datetime | None = None,
               streaming: bool = True) -> SiteReplication:
    return SiteReplication(kind="postgres", role="replica", position=position, position_time=at,
                           streaming=streaming, complete_as_of_time=complete)


def test_defaults_come_from_the_rpo_objective() -> None:
    assert spec().lag_seconds_limit == 60 and spec().max_lag_bytes == MIB
    assert spec(objectives={"rpoSeconds": 15}).lag_seconds_limit == 15
    assert spec(objectives={"rpoSeconds": 15}, maxLagSeconds=5).lag_seconds_limit == 5


def test_a_replica_that_has_everything_is_fresh_whatever_its_link() -> None:
    lag = replica_lag(spec(), primary_at(500, NOW), None, replica_at(500, NOW, streaming=False),
                      "eu")
    assert lag.lag_bytes == 0 and lag.lag_seconds == 0 and lag.stale is False
    assert lag.complete_as_of_time == NOW


def test_a_broken_replica_behind_a_busy_primary_is_stale_with_the_lag_in_words() -> None:
    earlier = NOW - dt.timedelta(seconds=90)
    lag = replica_lag(spec(), primary_at(5 * MIB, NOW), None,
                      replica_at(1000, NOW, complete=earlier, streaming=False), "eu")
    assert lag.stale is True and lag.lag_bytes == 5 * MIB - 1000 and lag.lag_seconds == 90
    assert lag.message is not None
    assert f"{5 * MIB - 1000} bytes / 90s behind eu (NOT streaming" in lag.message


def test_unknown_lag_is_stale() -> None:
    lag = replica_lag(spec(), None, None, replica_at(10, NOW), "eu")
    assert lag.stale is True and lag.message is not None and "unknown" in lag.message


def test_the_window_of_a_dead_primary_does_not_grow_with_the_outage() -> None:
    # the primary's last observation is kept while it is down; the lag is measured to it
    seen = NOW - dt.timedelta(seconds=5)
    lag = replica_lag(spec(), primary_at(2000, seen), None,
                      replica_at(1000, NOW + dt.timedelta(hours=3),
                                 complete=seen - dt.timedelta(seconds=2)), "eu")
    assert lag.lag_seconds == 2


@given(
    source=st.integers(0, 10 * MIB), replica=st.integers(0, 10 * MIB),
    age=st.integers(0, 600), max_bytes=st.integers(0, 4 * MIB), max_seconds=st.integers(0, 300),
)
def test_stale_exactly_when_a_limit_is_exceeded(
    source: int, replica: int, age: int, max_bytes: int, max_seconds: int
) -> None:
    plan = spec(maxLagBytes=max_bytes, maxLagSeconds=max_seconds)
    complete = NOW - dt.timedelta(seconds=age)
    lag = replica_lag(plan, primary_at(source, NOW), None, replica_at(replica, NOW, complete),
                      "eu")
    behind = max(0, source - replica)
    assert lag.lag_bytes == behind
    assert lag.lag_seconds == (0 if behind == 0 else age)
    assert lag.stale == (behind > max_bytes or (behind > 0 and age > max_seconds))


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=20))
def test_complete_as_of_never_moves_back(samples: list[tuple[int, int]]) -> None:
    plan = spec()
    previous: dict[str, SiteStatus] = {}
    last_complete: dt.datetime | None = None
    position = 0
    for n, (grow, received) in enumerate(samples):
        position += grow
        at = NOW + dt.timedelta(seconds=n)
        probes = {
            "primary": probe(at, Replication("postgres", "primary", position)),
            "secondary": probe(at, Replication("postgres", "replica", min(received, position),
                                               streaming=True)),
        }
        current = {k: SiteStatus(healthy=True) for k in probes}
        sites = next_replication(plan, "primary", previous, current, probes)
        rep = sites["secondary"].replication
        assert rep is not None
        if last_complete is not None:
            assert rep.complete_as_of_time is not None and rep.complete_as_of_time >= last_complete
        last_complete = rep.complete_as_of_time
        primary_rep = sites["primary"].replication
        assert primary_rep is not None and primary_rep.stale is None
        previous = sites


def probe(at: dt.datetime, replication: Replication | None) -> SiteProbe:
    return SiteProbe("x", at, (CheckResult("db", True, 1.0, "ok", replication),))


def test_an_unreachable_primary_keeps_its_last_position() -> None:
    plan = spec()
    first = next_replication(
        plan, "primary", {}, {"primary": SiteStatus(), "secondary": SiteStatus()},
        {"primary": probe(NOW, Replication("postgres", "primary", 900)),
         "secondary": probe(NOW, Replication("postgres", "replica", 100, streaming=False))},
    )
    later = NOW + dt.timedelta(seconds=10)
    second = next_replication(
        plan, "primary", first, {"primary": SiteStatus(), "secondary": SiteStatus()},
        {"primary": SiteProbe("eu", later, (CheckResult("db", False, 1.0, "refused"),)),
         "secondary": probe(later, Replication("postgres", "replica", 100, streaming=False))},
    )
    primary_rep, secondary_rep = second["primary"].replication, second["secondary"].replication
    assert primary_rep is not None and primary_rep.position == 900
    assert secondary_rep is not None and secondary_rep.lag_bytes == 800


# --------------------------------------------------------------------------- decisions


def up() -> SiteStatus:
    return SiteStatus(healthy=True, consecutive_successes=3,
                      checks=[CheckStatus(name="db", ok=True)])


def down() -> SiteStatus:
    since = NOW - dt.timedelta(seconds=30)
    return SiteStatus(healthy=False, consecutive_failures=3, first_failure_time=since,
                      down_since=since, checks=[CheckStatus(name="db", ok=False,
                                                            message="refused")])


def with_lag(site: SiteStatus, stale: bool) -> SiteStatus:
    rep = replica_at(1, NOW).model_copy(update={
        "stale": stale, "lag_bytes": 5 * MIB if stale else 0, "lag_seconds": 90 if stale else 0,
        "message": "5242880 bytes / 90s behind eu" if stale else "0 bytes behind eu"})
    return site.model_copy(update={"replication": rep})


def plan_status(primary: SiteStatus, secondary: SiteStatus, state: str = "Monitoring",
                **kw: Any) -> FailoverPlanStatus:
    return FailoverPlanStatus(sites={"primary": primary, "secondary": secondary}, state=state,
                              active_site=kw.pop("active_site", "primary"), **kw)


def test_automatic_plan_blocks_on_a_stale_secondary_with_one_warning() -> None:
    decision = decide(spec(), plan_status(down(), with_lag(up(), True)), {}, NOW)
    assert decision.action == "block" and decision.reason == "SecondaryLagging"
    assert "5242880 bytes / 90s behind eu" in decision.message
    assert [e.reason for e in decision.events] == ["FailoverBlocked"]
    assert decision.events[0].type == "Warning"
    again = decide(spec(), plan_status(down(), with_lag(up(), True), "Blocked"), {}, NOW)
    assert again.action == "block" and again.events == ()


def test_blocked_plan_fails_over_once_the_secondary_caught_up() -> None:
    decision = decide(spec(), plan_status(down(), with_lag(up(), False), "Blocked"), {}, NOW)
    assert decision.action == "start_failover"


def test_blocked_plan_unblocks_when_the_primary_recovers() -> None:
    decision = decide(spec(), plan_status(up(), with_lag(up(), True), "Blocked"), {}, NOW)
    assert decision.action == "unblock"
    assert [e.reason for e in decision.events] == ["FailoverUnblocked"]


def test_manual_mode_does_not_recommend_a_stale_secondary() -> None:
    decision = decide(spec(mode="Manual"), plan_status(down(), with_lag(up(), True)), {}, NOW)
    assert decision.action == "block" and decision.approval_token is None


def test_manual_trigger_onto_a_stale_secondary_needs_the_acknowledgement() -> None:
    state = plan_status(down(), with_lag(up(), True), "Blocked")
    refused = decide(spec(), state, {FAILOVER: "site lost"}, NOW)
    assert refused.action == "block" and FAILOVER in refused.consume
    assert any(e.reason == "SecondaryLagging" and ACCEPT_DATA_LOSS in e.message
               for e in refused.events)
    forced = decide(spec(), state, {FAILOVER: "force:site lost"}, NOW)
    assert forced.action == "block", "force skips health, never the data-loss acknowledgement"
    accepted = decide(spec(), state, {FAILOVER: "site lost", ACCEPT_DATA_LOSS: "INC-1"}, NOW)
    assert accepted.action == "start_failover" and accepted.data_loss_accepted == "INC-1"
    assert accepted.expected_lag_bytes == 5 * MIB and accepted.expected_lag_seconds == 90
    assert set(accepted.consume) == {FAILOVER, ACCEPT_DATA_LOSS}
    assert "DataLossAccepted" in [e.reason for e in accepted.events]


def test_approval_of_a_stale_secondary_needs_the_acknowledgement() -> None:
    state = plan_status(down(), with_lag(up(), True), "AwaitingApproval", approval_token="t")
    refused = decide(spec(mode="Manual"), state, {APPROVE: "t"}, NOW)
    assert refused.action != "start_failover"
    assert "SecondaryLagging" in [e.reason for e in refused.events]
    accepted = decide(spec(mode="Manual"), state, {APPROVE: "t", ACCEPT_DATA_LOSS: "ok"}, NOW)
    assert accepted.action == "start_failover" and accepted.data_loss_accepted == "ok"


def test_a_lone_acknowledgement_is_consumed_and_never_saved_for_later() -> None:
    decision = decide(spec(), plan_status(up(), with_lag(up(), True)), {ACCEPT_DATA_LOSS: "x"},
                      NOW)
    assert ACCEPT_DATA_LOSS in decision.consume
    assert "TriggerIgnored" in [e.reason for e in decision.events]


def test_default_failback_after_a_database_promotion_is_refused_as_diverged() -> None:
    state = plan_status(up(), up(), "FailedOver", active_site="secondary")
    decision = decide(spec(), state, {FAILBACK: "home"}, NOW)
    assert decision.action != "start_failback"
    assert "DivergedPrimary" in [e.reason for e in decision.events]


def test_switchover_failback_runs_while_the_old_primary_is_a_standby() -> None:
    target = {"host": "h", "database": "d", "userSecretRef": {"name": "s", "key": "u"},
              "passwordSecretRef": {"name": "s", "key": "p"}}
    plan = spec(failbackSteps=[{"name": "switch", "postgresSwitchover": {
        "target": target, "primary": target}}])
    state = plan_status(down(), up(), "FailedOver", active_site="secondary")
    assert decide(plan, state, {FAILBACK: "home"}, NOW).action == "start_failback"


# --------------------------------------------------------------------------- approvals


def approval_obj(name: str, created: str, state: str | None = None, accepted: bool = True,
                 **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Accepted",
                                              "status": "True" if accepted else "False"}]}
    if state:
        status["state"] = state
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"planName": "orders", "action": "Failover", "reason": "r", **spec},
            "status": status}


def test_the_oldest_accepted_unhandled_approval_of_the_plan_is_taken() -> None:
    objs = [
        approval_obj("used", "2026-01-01T11:00:00Z", state="Used"),
        approval_obj("invalid", "2026-01-01T11:01:00Z", accepted=False),
        approval_obj("other", "2026-01-01T11:02:00Z", planName="billing"),
        approval_obj("newer", "2026-01-01T11:59:00Z"),
        approval_obj("older", "2026-01-01T11:58:00Z"),
    ]
    found = pending_approval(objs, "orders")
    assert found is not None and found["metadata"]["name"] == "older"
    assert pending_approval(objs[:3], "orders") is None


def test_approvals_map_to_the_triggers_they_stand_for() -> None:
    fresh = "2026-01-01T11:59:00Z"
    assert approval_triggers(approval_obj("a", fresh), NOW) == {
        FAILOVER: "r (FailoverApproval a)"}
    assert approval_triggers(approval_obj("f", fresh, force=True, acceptDataLoss="INC"), NOW) == {
        FAILOVER: "force:r (FailoverApproval f)", ACCEPT_DATA_LOSS: "INC (FailoverApproval f)"}
    assert approval_triggers(approval_obj("b", fresh, action="Failback"), NOW) == {
        FAILBACK: "r (FailoverApproval b)"}
    expired = approval_triggers(approval_obj("old", "2026-01-01T11:00:00Z"), NOW)
    assert isinstance(expired, str) and expired.startswith("expired")


def test_an_approval_is_used_only_by_the_transition_it_asked_for() -> None:
    stale = plan_status(down(), with_lag(up(), True), "Blocked")
    triggers = approval_triggers(approval_obj("a", "2026-01-01T11:59:00Z"), NOW)
    assert isinstance(triggers, dict)
    refused = approval_outcome(decide(spec(), stale, triggers, NOW), triggers)
    assert refused[0] is False and "accept-data-loss" in refused[1]
    fresh = plan_status(down(), with_lag(up(), False))
    used = approval_outcome(decide(spec(), fresh, triggers, NOW), triggers)
    assert used[0] is True and "FailoverApproval a" in used[1]
