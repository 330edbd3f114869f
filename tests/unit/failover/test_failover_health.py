"""The health state machine: Kubernetes probe semantics with weights."""

from __future__ import annotations

import datetime as dt

from aegis.api.failoverplan import Site, SiteStatus
from aegis.probes import CheckResult, SiteProbe
from aegis.reconcilers.failover import (
    attempt_failed,
    next_site_status,
    probe_due,
    site_condition,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def site(**kw: object) -> Site:
    checks = kw.pop("checks", [{"name": "web", "tcp": {"host": "h", "port": 1}}])
    return Site.model_validate({"name": "eu", "checks": checks, **kw})


def probe(second: int, **oks: bool) -> SiteProbe:
    results = tuple(CheckResult(n, ok, 1.0, "ok" if ok else "refused") for n, ok in oks.items())
    return SiteProbe("eu", T0 + dt.timedelta(seconds=second), results)


def run(s: Site, pattern: str, start: SiteStatus | None = None) -> list[SiteStatus]:
    """Feed a pattern like 'FFS' (F: failed attempt, S: good one); one probe per second."""
    status, out = start, []
    for i, c in enumerate(pattern):
        status = next_site_status(s, status, probe(i, web=c == "S"))
        out.append(status)
    return out


def test_unknown_until_a_threshold_is_reached() -> None:
    s = site(failureThreshold=3, successThreshold=2)
    assert [x.healthy for x in run(s, "FF")] == [None, None]
    assert [x.healthy for x in run(s, "SS")] == [None, True]


def test_failure_threshold_makes_the_site_down_and_records_the_first_failure() -> None:
    s = site(failureThreshold=3)
    states = run(s, "SSFFF")
    assert [x.healthy for x in states] == [True, True, True, True, False]
    down = states[-1]
    assert down.consecutive_failures == 3
    assert down.first_failure_time == T0 + dt.timedelta(seconds=2)
    assert down.down_since == T0 + dt.timedelta(seconds=2)
    assert down.last_probe_time == T0 + dt.timedelta(seconds=4)
    assert down.checks is not None and down.checks[0].message == "refused"


def test_flapping_shorter_than_the_threshold_never_goes_down() -> None:
    s = site(failureThreshold=3)
    states = run(s, "S" + "FFS" * 10)
    assert all(x.healthy is True for x in states)
    assert max(x.consecutive_failures for x in states) == 2


def test_success_threshold_is_needed_to_come_back_and_down_since_is_kept() -> None:
    s = site(failureThreshold=2, successThreshold=3)
    states = run(s, "SFFSSFFSSS", start=SiteStatus(healthy=True, consecutive_successes=9))
    assert [x.healthy for x in states] == [
        True, True, False, False, False, False, False, False, False, True,
    ]
    # the run that crossed the threshold started at second 1; later runs do not move it
    assert states[6].down_since == T0 + dt.timedelta(seconds=1)
    assert states[6].first_failure_time == T0 + dt.timedelta(seconds=5)
    assert states[-1].down_since is None


def test_weights_and_down_weight() -> None:
    checks = [
        {"name": "a", "weight": 2, "tcp": {"host": "h", "port": 1}},
        {"name": "b", "weight": 1, "tcp": {"host": "h", "port": 1}},
        {"name": "c", "weight": 1, "tcp": {"host": "h", "port": 1}},
    ]
    s = site(checks=checks, downWeight=3)

    def results(**oks: bool) -> list[CheckResult]:
        return [CheckResult(n, ok, 1.0, "") for n, ok in oks.items()]

    assert not attempt_failed(s, results(a=False, b=True, c=True))
    assert not attempt_failed(s, results(a=True, b=False, c=False))
    assert attempt_failed(s, results(a=False, b=False, c=True))
    default = site(checks=checks)  # no downWeight: any failed check fails the attempt
    assert attempt_failed(default, results(a=True, b=True, c=False))


def test_probe_due_follows_period_seconds() -> None:
    s = site(periodSeconds=10)
    assert probe_due(s, None, T0)
    status = SiteStatus(last_probe_time=T0)
    assert not probe_due(s, status, T0 + dt.timedelta(seconds=9))
    assert probe_due(s, status, T0 + dt.timedelta(seconds=10))


def test_site_condition_says_why() -> None:
    s = site(failureThreshold=3)
    states = run(s, "SFFF")
    assert site_condition("primary", s, None).status == "Unknown"
    below = site_condition("primary", s, states[1])
    assert (below.type, below.status, below.reason) == ("PrimaryHealthy", "True", "BelowThreshold")
    assert "1/3" in below.message
    down = site_condition("secondary", s, states[-1])
    assert (down.type, down.status, down.reason) == ("SecondaryHealthy", "False", "Down")
    assert "web: refused" in down.message and "2025-01-01T00:00:01Z" in down.message
