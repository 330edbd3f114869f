"""Retention: keepLast + GFS in the policy's zone, never-prune rules, locks, failures."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.api.backuppolicy import Retention
from aegis.reconcilers.retention import (
    FAILED_POINTS_KEPT,
    PointInfo,
    RetentionDecision,
    decide_retention,
    next_retention_check,
    select_prunable,
)

UTC = dt.UTC
NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
        ) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def done(name: str, when: dt.datetime, **extra: Any) -> PointInfo:
    return PointInfo(name=name, phase="Completed", source_time=when, **extra)


def keep(**counts: int) -> Retention:
    return Retention.model_validate(counts)


def by_name(decisions: list[RetentionDecision]) -> dict[str, RetentionDecision]:
    return {d.name: d for d in decisions}


def hourly_points(count: int, start: dt.datetime = utc(2026, 6, 15, 0)) -> list[PointInfo]:
    return [done(f"p{i:03d}", start + dt.timedelta(hours=i)) for i in range(count)]


def test_keep_last_two_of_four() -> None:
    points = hourly_points(4)
    assert select_prunable(points, keep(keepLast=2), "UTC", NOW) == ["p001", "p000"]
    decisions = by_name(decide_retention(points, keep(keepLast=2), "UTC", NOW))
    assert decisions["p003"].reasons == ("newest Completed point", "keepLast 1/2")
    assert decisions["p002"].reasons == ("keepLast 2/2",)
    assert decisions["p000"].action == "prune"
    assert decisions["p000"].reasons == ("not kept by keepLast or any GFS rule",)


def test_no_retention_keeps_everything() -> None:
    points = hourly_points(5)
    assert select_prunable(points, None, "UTC", NOW) == []
    assert select_prunable(points, Retention(), "UTC", NOW) == []
    assert decide_retention(points, Retention(), "UTC", NOW)[0].reasons == (
        "retention sets no keep rule",
    )


def test_zero_counts_keep_only_the_newest() -> None:
    points = hourly_points(3)
    assert select_prunable(points, keep(keepLast=0), "UTC", NOW) == ["p001", "p000"]


def test_keep_daily_keeps_newest_point_of_each_recent_day() -> None:
    points = [
        done("d1-early", utc(2026, 6, 10, 1)), done("d1-late", utc(2026, 6, 10, 20)),
        done("d2-early", utc(2026, 6, 11, 1)), done("d2-late", utc(2026, 6, 11, 20)),
        done("d4", utc(2026, 6, 13, 9)),  # no point on the 12th: buckets count days with points
    ]
    kept = {d.name for d in decide_retention(points, keep(keepDaily=3), "UTC", NOW)
            if d.action == "keep"}
    assert kept == {"d4", "d2-late", "d1-late"}


def test_daily_buckets_are_days_in_the_policy_zone() -> None:
    # 22:30Z is 00:30 the next day in Berlin (CEST, +2): in UTC both are on June 10.
    points = [done("evening", utc(2026, 6, 10, 21, 0)), done("late", utc(2026, 6, 10, 22, 30))]
    assert select_prunable(points, keep(keepDaily=5), "UTC", NOW) == ["evening"]
    assert select_prunable(points, keep(keepDaily=5), "Europe/Berlin", NOW) == []


def test_weekly_uses_iso_weeks_across_the_year_end() -> None:
    now = utc(2027, 1, 10)
    points = [
        done("mon-2026-12-28", utc(2026, 12, 28, 12)),
        done("sat-2027-01-02", utc(2027, 1, 2, 12)),  # same ISO week 2026-W53
        done("mon-2027-01-04", utc(2027, 1, 4, 12)),  # 2027-W01
    ]
    decisions = by_name(decide_retention(points, keep(keepWeekly=5), "UTC", now))
    assert decisions["mon-2026-12-28"].action == "prune"
    assert "keepWeekly 2026-W53 (2/5)" in decisions["sat-2027-01-02"].reasons
    assert "keepWeekly 2027-W01 (1/5)" in decisions["mon-2027-01-04"].reasons


def test_monthly_and_yearly() -> None:
    points = [
        done("2024-12", utc(2024, 12, 31, 12)), done("2025-06", utc(2025, 6, 1)),
        done("2025-12", utc(2025, 12, 1)), done("2026-05", utc(2026, 5, 2)),
        done("2026-05b", utc(2026, 5, 20)), done("2026-06", utc(2026, 6, 1)),
    ]
    pruned = set(select_prunable(points, keep(keepMonthly=2, keepYearly=3), "UTC", NOW))
    assert pruned == {"2025-06", "2026-05"}  # pruned: not the newest of their month or year


def test_hourly_buckets_split_the_repeated_hour() -> None:
    # Berlin 2026-10-25: 02:30 CEST (00:30Z) and 02:30 CET (01:30Z) are different real hours.
    points = [done("first", utc(2026, 10, 25, 0, 30)), done("second", utc(2026, 10, 25, 1, 30))]
    assert select_prunable(points, keep(keepHourly=2), "Europe/Berlin", NOW) == []
    assert select_prunable(points, keep(keepDaily=1), "Europe/Berlin", NOW) == ["first"]


def test_newest_verified_is_kept() -> None:
    points = hourly_points(5)
    points[1] = done("p001", points[1].source_time or NOW, verified=True)
    points[0] = done("p000", points[0].source_time or NOW, verified=True)
    decisions = by_name(decide_retention(points, keep(keepLast=1), "UTC", NOW))
    assert decisions["p001"].reasons == ("newest Verified point",)
    assert decisions["p000"].action == "prune"


def test_locked_point_is_kept_until_the_lock_ends() -> None:
    lock = utc(2026, 7, 1)
    points = [*hourly_points(2), done("old", utc(2026, 6, 1), locked_until=lock)]
    decisions = by_name(decide_retention(points, keep(keepLast=1), "UTC", NOW))
    assert decisions["old"].action == "keep"
    assert decisions["old"].reasons[0] == "locked until 2026-07-01T00:00:00Z"
    assert decisions["old"].retry_at == lock
    assert next_retention_check(list(decisions.values())) == lock
    later = by_name(decide_retention(points, keep(keepLast=1), "UTC", lock))
    assert later["old"].action == "prune"  # a lock ending exactly now no longer holds


def test_lock_on_a_point_kept_anyway_is_reported_without_retry() -> None:
    points = [done("only", utc(2026, 6, 1), locked_until=utc(2026, 7, 1))]
    decision = decide_retention(points, keep(keepLast=1), "UTC", NOW)[0]
    assert decision.action == "keep" and decision.retry_at is None
    assert decision.reasons[-1] == "locked until 2026-07-01T00:00:00Z"


def test_in_progress_points_are_kept() -> None:
    points = [
        *hourly_points(2),
        PointInfo("pending", "Pending", created=utc(2026, 6, 1)),
        PointInfo("running", "Running", created=utc(2026, 6, 1)),
        PointInfo("new", None, created=utc(2026, 6, 1)),
    ]
    assert select_prunable(points, keep(keepLast=1), "UTC", NOW) == ["p000"]


def test_expired_points_are_already_being_deleted() -> None:
    points = [*hourly_points(1), done("gone", utc(2026, 1, 1))]
    points[1] = PointInfo("gone", "Expired", source_time=utc(2026, 1, 1))
    decisions = by_name(decide_retention(points, keep(keepLast=1), "UTC", NOW))
    assert decisions["gone"].action == "deleting"
    assert select_prunable(points, keep(keepLast=1), "UTC", NOW) == []


def test_failures_after_the_newest_completed_are_kept_as_evidence() -> None:
    good = done("good", utc(2026, 6, 15, 0))
    old_failure = PointInfo("old-fail", "Failed", created=utc(2026, 6, 14))
    streak = [
        PointInfo(f"fail-{i}", "Failed" if i % 2 else "Corrupted", created=utc(2026, 6, 15, i))
        for i in range(1, 6)
    ]
    decisions = by_name(decide_retention([good, old_failure, *streak], keep(keepLast=5),
                                         "UTC", NOW))
    kept = [n for n, d in decisions.items() if d.action == "keep" and n.startswith("fail")]
    assert kept == ["fail-5", "fail-4", "fail-3"]
    assert len(kept) == FAILED_POINTS_KEPT
    assert decisions["fail-1"].action == "prune"
    assert decisions["old-fail"].reasons == ("Failed, followed by a Completed point",)
    assert decisions["good"].action == "keep"


def test_completed_without_source_time_is_kept() -> None:
    points = [*hourly_points(2), PointInfo("odd", "Completed", created=utc(2026, 1, 1))]
    assert select_prunable(points, keep(keepLast=1), "UTC", NOW) == ["p000"]


# Properties.

PHASES = ["Completed"] * 5 + ["Failed", "Corrupted", "Pending", "Running", "Expired", None]


@st.composite
def point_lists(draw: st.DrawFn) -> list[PointInfo]:
    count = draw(st.integers(min_value=0, max_value=25))
    points = []
    for i in range(count):
        phase = draw(st.sampled_from(PHASES))
        minutes = draw(st.integers(min_value=0, max_value=60 * 24 * 400))
        when = NOW - dt.timedelta(minutes=minutes)
        lock = draw(st.sampled_from([None, None, None, NOW - dt.timedelta(days=1),
                                     NOW + dt.timedelta(days=1)]))
        points.append(PointInfo(
            name=f"p{i:02d}", phase=phase,
            source_time=when if phase in ("Completed", "Expired") else None,
            verified=phase == "Completed" and draw(st.booleans()),
            locked_until=lock, created=when,
        ))
    return points


counts = st.one_of(st.none(), st.integers(min_value=0, max_value=6))
retentions = st.builds(
    Retention, keep_last=counts, keep_hourly=counts, keep_daily=counts, keep_weekly=counts,
    keep_monthly=counts, keep_yearly=counts,
)
zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])


def newest(points: list[PointInfo], verified: bool = False) -> str | None:
    good = [p for p in points if p.phase == "Completed" and p.source_time
            and (p.verified or not verified)]
    if not good:
        return None
    return max(good, key=lambda p: (p.source_time, p.name)).name


@settings(max_examples=300, deadline=None)
@given(points=point_lists(), retention=retentions, zone=zones)
def test_never_prunes_protected_points(
    points: list[PointInfo], retention: Retention, zone: str
) -> None:
    pruned = set(select_prunable(points, retention, zone, NOW))
    assert newest(points) not in pruned
    assert newest(points, verified=True) not in pruned
    for point in points:
        if point.name in pruned:
            assert point.phase in ("Completed", "Failed", "Corrupted")
            assert point.locked_until is None or point.locked_until <= NOW


@settings(max_examples=300, deadline=None)
@given(points=point_lists(), retention=retentions, zone=zones)
def test_pruning_is_idempotent(points: list[PointInfo], retention: Retention, zone: str) -> None:
    pruned = set(select_prunable(points, retention, zone, NOW))
    rest = [p for p in points if p.name not in pruned]
    assert select_prunable(rest, retention, zone, NOW) == []


@settings(max_examples=300, deadline=None)
@given(points=point_lists(), retention=retentions, zone=zones,
       field=st.sampled_from(["keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                              "keep_monthly", "keep_yearly"]),
       more=st.integers(min_value=1, max_value=5))
def test_raising_a_keep_count_never_prunes_more(
    points: list[PointInfo], retention: Retention, zone: str, field: str, more: int
) -> None:
    current = getattr(retention, field) or 0
    if not any(getattr(retention, f) is not None for f in Retention.model_fields):
        return  # "no keep rule" keeps all; adding one is allowed to prune
    larger = retention.model_copy(update={field: current + more})
    before = set(select_prunable(points, retention, zone, NOW))
    after = set(select_prunable(points, larger, zone, NOW))
    assert after <= before


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.integers(min_value=0, max_value=10**7), min_size=0, max_size=30,
                      unique=True),
       keep_last=st.integers(min_value=1, max_value=10))
def test_keep_last_alone_keeps_exactly_the_newest(times: list[int], keep_last: int) -> None:
    points = [done(f"p{t}", NOW - dt.timedelta(seconds=t)) for t in times]
    kept = {d.name for d in decide_retention(points, keep(keepLast=keep_last), "UTC", NOW)
            if d.action == "keep"}
    expected = {f"p{t}" for t in sorted(times)[:keep_last]}
    assert kept == expected


@settings(max_examples=100, deadline=None)
@given(points=point_lists(), zone=zones)
def test_every_point_gets_exactly_one_decision_with_a_reason(
    points: list[PointInfo], zone: str
) -> None:
    decisions = decide_retention(points, keep(keepLast=2, keepDaily=3), zone, NOW)
    assert sorted(d.name for d in decisions) == sorted(p.name for p in points)
    assert all(d.reasons for d in decisions)
