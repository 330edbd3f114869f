"""Which RecoveryPoints of a policy to prune: keepLast plus grandfather-father-son buckets.

A pure function over plain `PointInfo` values: no kopf, no kubernetes, no clock of its
own. `decide_retention` returns one `RetentionDecision` per point with every reason that
applies, for events and debugging; `select_prunable` returns just the names to delete.

Rules (docs/scheduling.md has the user-facing version):

1. No `retention`, or a `retention` that sets no keep count at all: keep everything.
2. Only Completed points with a source time are "good": keepLast and the GFS rules count
   them, ordered by source time (newest first; ties by name).
   - keepLast N keeps the N newest.
   - keepHourly/Daily/Weekly/Monthly/Yearly N (restic's and borg's rule): walk the good
     points newest first, put each in its bucket (the real hour, the calendar day, the
     ISO week, the month, the year of its source time in the policy's time zone), and
     keep the newest point of each of the N most recent buckets that hold a point.
     Hourly buckets are real hours: the repeated hour of a fall-back day is two buckets.
   A point is kept when any rule keeps it.
3. Never pruned, whatever the counts: the newest Completed point, the newest Verified
   point, Pending/Running points (and points without a phase yet: their backup has not
   reported), and a point whose Object Lock runs past `now` (kept, with the lock's end,
   so the caller waits until then instead of retrying a delete that must fail).
4. Failed and Corrupted points do not count toward any keep rule. The newest
   `FAILED_POINTS_KEPT` of those newer than the newest Completed point are kept as
   evidence of the current failure streak; the rest are pruned. Once a newer backup
   completes, the failures before it are pruned.
5. Expired points are already being deleted: reported as "deleting", not pruned again.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from aegis.api.backuppolicy import Retention

FAILED_POINTS_KEPT: Final = 3
IN_PROGRESS: Final = frozenset({"Pending", "Running", None})
FAILED: Final = frozenset({"Failed", "Corrupted"})

Action = Literal["keep", "prune", "deleting"]


@dataclass(frozen=True)
class PointInfo:
    """What retention needs to know about one RecoveryPoint."""

    name: str
    phase: str | None
    """status.phase; None when the point has no status yet."""
    source_time: dt.datetime | None = None
    """status.sourceTime (aware)."""
    verified: bool = False
    """The Verified condition is True (a passed restore drill or verification)."""
    locked_until: dt.datetime | None = None
    """status.lockedUntil: the end of the Object Lock of its objects."""
    created: dt.datetime | None = None
    """metadata.creationTimestamp: orders points without a source time (failed ones)."""


@dataclass(frozen=True)
class RetentionDecision:
    """The verdict on one point, with every reason that applies."""

    name: str
    action: Action
    reasons: tuple[str, ...]
    retry_at: dt.datetime | None = None
    """For a point that would be pruned but is locked: when the lock ends. Re-evaluate
    then, not before."""


@dataclass
class _Verdict:
    point: PointInfo
    keep: list[str] = field(default_factory=list)
    prune: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Bucketing:
    rule: str
    count: int
    key: Callable[[dt.datetime], Hashable]
    label: Callable[[dt.datetime], str]


def _buckets(retention: Retention) -> list[_Bucketing]:
    # Local times carry `fold`, so the two passes of a repeated hour are distinct buckets.
    rules: list[tuple[str, int | None, Callable[[dt.datetime], Hashable], str]] = [
        ("keepHourly", retention.keep_hourly, lambda t: (t.date(), t.hour, t.fold),
         "%Y-%m-%d %H:00 %Z"),
        ("keepDaily", retention.keep_daily, lambda t: t.date(), "%Y-%m-%d"),
        ("keepWeekly", retention.keep_weekly, lambda t: t.isocalendar()[:2], "%G-W%V"),
        ("keepMonthly", retention.keep_monthly, lambda t: (t.year, t.month), "%Y-%m"),
        ("keepYearly", retention.keep_yearly, lambda t: t.year, "%Y"),
    ]
    return [
        _Bucketing(rule, count, key, _formatter(fmt)) for rule, count, key, fmt in rules if count
    ]


def _formatter(pattern: str) -> Callable[[dt.datetime], str]:
    def label(local: dt.datetime) -> str:
        return local.strftime(pattern)

    return label


def has_keep_rule(retention: Retention | None) -> bool:
    """True when `retention` sets at least one keep count (even 0)."""
    if retention is None:
        return False
    counts = (
        retention.keep_last, retention.keep_hourly, retention.keep_daily,
        retention.keep_weekly, retention.keep_monthly, retention.keep_yearly,
    )
    return any(c is not None for c in counts)


def _age_key(point: PointInfo) -> tuple[dt.datetime, str]:
    when = point.source_time or point.created or dt.datetime.min.replace(tzinfo=dt.UTC)
    return when, point.name


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decide_retention(
    points: Sequence[PointInfo],
    retention: Retention | None,
    time_zone: str,
    now: dt.datetime,
) -> list[RetentionDecision]:
    """One decision per point, newest first. `time_zone` is the policy's IANA zone (the
    GFS buckets are calendar units there); `now` (aware) is compared with Object Locks."""
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    zone = zoneinfo.ZoneInfo(time_zone)
    ordered = sorted(points, key=_age_key, reverse=True)
    if not has_keep_rule(retention):
        why = "no retention policy" if retention is None else "retention sets no keep rule"
        return [RetentionDecision(p.name, "keep", (why,)) for p in ordered]
    assert retention is not None

    verdicts = [_Verdict(p) for p in ordered]
    good = [v for v in verdicts if v.point.phase == "Completed" and v.point.source_time]
    _apply_good_rules(good, retention, zone)
    _apply_phase_rules(verdicts, good)
    return [_decide(v, now) for v in verdicts]


def _apply_good_rules(good: list[_Verdict], retention: Retention, zone: zoneinfo.ZoneInfo) -> None:
    if good:
        good[0].keep.append("newest Completed point")
    for index, verdict in enumerate(good[: retention.keep_last or 0]):
        verdict.keep.append(f"keepLast {index + 1}/{retention.keep_last}")
    for bucketing in _buckets(retention):
        seen: list[Hashable] = []
        for verdict in good:
            assert verdict.point.source_time is not None
            local = verdict.point.source_time.astimezone(zone)
            key = bucketing.key(local)
            if seen and seen[-1] == key:
                continue  # an older point of a bucket already kept
            seen.append(key)
            if len(seen) > bucketing.count:
                break
            verdict.keep.append(
                f"{bucketing.rule} {bucketing.label(local)} ({len(seen)}/{bucketing.count})"
            )
    verified = [v for v in good if v.point.verified]
    if verified:
        verified[0].keep.append("newest Verified point")


def _apply_phase_rules(verdicts: list[_Verdict], good: list[_Verdict]) -> None:
    newest_good = _age_key(good[0].point) if good else None
    failures_kept = 0
    for verdict in verdicts:
        point = verdict.point
        if point.phase in IN_PROGRESS:
            verdict.keep.append(f"backup in progress ({point.phase or 'no status yet'})")
        elif point.phase == "Completed" and point.source_time is None:
            verdict.keep.append("Completed without a source time: cannot place it in time")
        elif point.phase in FAILED:
            newer = newest_good is None or _age_key(point) > newest_good
            if newer and failures_kept < FAILED_POINTS_KEPT:
                failures_kept += 1
                verdict.keep.append(
                    f"{point.phase}, newer than any Completed point "
                    f"({failures_kept}/{FAILED_POINTS_KEPT} kept as evidence)"
                )
            elif newer:
                verdict.prune.append(
                    f"{point.phase}; {FAILED_POINTS_KEPT} newer failures are kept"
                )
            else:
                verdict.prune.append(f"{point.phase}, followed by a Completed point")
        elif point.phase == "Completed" and not verdict.keep:
            verdict.prune.append("not kept by keepLast or any GFS rule")
        elif point.phase not in ("Completed", "Expired"):
            verdict.keep.append(f"unknown phase {point.phase!r}: kept to be safe")


def _decide(verdict: _Verdict, now: dt.datetime) -> RetentionDecision:
    point = verdict.point
    if point.phase == "Expired":
        return RetentionDecision(point.name, "deleting", ("Expired: already being deleted",))
    locked = point.locked_until is not None and point.locked_until > now
    lock_reason = f"locked until {_iso(point.locked_until)}" if point.locked_until else ""
    if verdict.keep:
        reasons = (*verdict.keep, lock_reason) if locked else tuple(verdict.keep)
        return RetentionDecision(point.name, "keep", reasons)
    if locked:
        return RetentionDecision(
            point.name, "keep", (lock_reason, *verdict.prune), retry_at=point.locked_until
        )
    return RetentionDecision(point.name, "prune", tuple(verdict.prune))


def select_prunable(
    points: Sequence[PointInfo],
    retention: Retention | None,
    time_zone: str,
    now: dt.datetime,
) -> list[str]:
    """Names of the points to delete now (newest first)."""
    return [
        d.name for d in decide_retention(points, retention, time_zone, now) if d.action == "prune"
    ]


def next_retention_check(decisions: Sequence[RetentionDecision]) -> dt.datetime | None:
    """The earliest lock end among points kept only by their lock: when to look again."""
    times = [d.retry_at for d in decisions if d.retry_at is not None]
    return min(times) if times else None
