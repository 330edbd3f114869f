"""When a BackupPolicy runs: cron ticks in a time zone, jitter, missed runs, concurrency.

Pure functions with an explicit clock: every function takes `now` (an aware datetime) and
none reads the system clock, so the same inputs always give the same plan. No kopf, no
kubernetes here; the BackupPolicy handler calls `plan_runs` and acts on the `Plan`.

How the handler uses it::

    plan = plan_runs(spec, PolicyKey(namespace, name), since=cursor or created, now=now,
                     active=[names of this policy's Pending/Running RecoveryPoints])
    for rp in plan.stop:           # concurrencyPolicy Replace
        stop the backup of rp
    if plan.run is not None:       # create-or-get: a retried create is harmless
        create RecoveryPoint plan.run_name (scheduledTime=plan.run) and its Job
    status: lastScheduleTime = plan.run (when set), missedRuns += plan.missed_count,
            nextScheduleTime = plan.next_run_time, the cursor = plan.handled_until
    requeue after plan.requeue_after seconds (None: wait for a spec change)

`since` is a cursor the handler persists: every tick at or before it has been handled
(run, skipped or suspended). Persisting it together with `missedRuns` in one status patch
keeps missed runs counted exactly once; a crash between creating a RecoveryPoint and
writing the cursor plans the same tick again, which maps to the same names.

Ticks (see docs/scheduling.md for the user-facing rules):

- The cron expression is matched against the wall clock of `timeZone`. A tick's identity
  is its UTC instant (the RecoveryPoint's name); its Job is due `jitter` seconds later.
- Spring forward (a wall time that does not exist): a schedule with a fixed hour field
  (e.g. `30 2 * * *`) runs once, at the first instant after the gap (03:00 local);
  all its wall times that fall into the gap collapse into that one run. A schedule whose
  hour field starts with `*` (`30 * * * *`, `*/15 */2 * * *`) follows real hours: the
  skipped wall times are simply not there.
- Fall back (a wall time that occurs twice): a fixed-hour schedule runs at the first
  occurrence only; a `*`-hour schedule runs at both, because each is a distinct real hour.
This is Vixie cron's rule (the cron of Debian and most Linux systems), except that
Vixie cron also treats a `*` minute field as "follow real time"; here only the hour
field decides, so `*/15 2 * * *` still runs once for each of its wall times.
The computation maps naive wall-clock times from the cron expression to UTC with zoneinfo
(croniter's own time-zone arithmetic repeats fixed-hour runs on fall-back days).
Assumes a zone never sets its clock back by more than 3 hours (true of every IANA zone
since 1970).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import heapq
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final, Literal

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from aegis.api.backuppolicy import BackupPolicySpec
from aegis.reconcilers.naming import recovery_point_name

UTC: Final = dt.UTC
_MINUTE: Final = dt.timedelta(minutes=1)
_DAY: Final = dt.timedelta(days=1)
_EPOCH: Final = dt.datetime(1970, 1, 1)
_EPOCH_UTC: Final = _EPOCH.replace(tzinfo=UTC)
# How far a clock may be set back at once; offsets are probed this far around an instant,
# every 30 minutes (no zone keeps an offset for less than that).
_MAX_SETBACK: Final = dt.timedelta(hours=3)
_PROBES: Final = tuple(_MAX_SETBACK * i / 6 for i in range(1, 7))
# No real schedule needs more than 28 years between ticks (Feb 29 on a given weekday).
_MAX_DAYS_BETWEEN_TICKS: Final = 366 * 30
# Counting missed ticks walks them one by one; beyond this the count is a lower bound.
MISSED_COUNT_LIMIT: Final = 100_000


class ScheduleError(ValueError):
    """The schedule cannot produce ticks (bad syntax, unknown zone, or a date that never
    occurs, e.g. `0 0 30 2 *`). The message names `spec.schedule` or `spec.timeZone`."""


def _require_aware(value: dt.datetime, what: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def _as_utc(wall: dt.datetime, offset: dt.timedelta) -> dt.datetime:
    return (wall - offset).replace(tzinfo=UTC)


def _seconds(instant: dt.datetime) -> int:
    return int((instant.replace(tzinfo=None) - _EPOCH).total_seconds())


class Schedule:
    """A compiled 5-field cron expression in an IANA zone. Get one with `compile_schedule`
    (cached); instances are immutable and safe to share between threads."""

    def __init__(self, expression: str, time_zone: str) -> None:
        self.expression = expression
        self.time_zone = time_zone
        try:
            self.zone = zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(
                f"spec.timeZone: {time_zone!r} is not an IANA time zone name, "
                "e.g. 'UTC' or 'Europe/Berlin'"
            ) from None
        fields = expression.split()
        if len(fields) != 5:
            raise ScheduleError(
                f"spec.schedule: {expression!r} must have 5 fields "
                "(minute hour day-of-month month day-of-week), e.g. '0 */6 * * *'"
            )
        try:
            expanded, _ = croniter.expand(expression)
        except (CroniterBadCronError, ValueError) as error:
            raise ScheduleError(
                f"spec.schedule: {expression!r} is not valid cron: {error}"
            ) from None
        self.minutes: tuple[int, ...] = _field_values(expanded[0], 60)
        self.hours: tuple[int, ...] = _field_values(expanded[1], 24)
        self.follows_real_time: bool = fields[1].startswith("*")
        """True when the hour field starts with `*`: runs in a repeated hour run twice and
        skipped wall times are not made up."""
        self._every_day = all(str(f[0]) == "*" for f in (expanded[2], expanded[3], expanded[4]))
        self._day_expression = f"0 0 {fields[2]} {fields[3]} {fields[4]}"

    def __repr__(self) -> str:
        return f"Schedule({self.expression!r}, {self.time_zone!r})"

    # Dates: day-of-month, month and day-of-week are croniter's business (L, W, #, and the
    # Vixie OR of day-of-month and day-of-week); minutes and hours are plain lists.

    def _date_on_or_after(self, day: dt.date) -> dt.date:
        return day if self._every_day else self._matching_date(day, True)

    def _date_on_or_before(self, day: dt.date) -> dt.date:
        return day if self._every_day else self._matching_date(day, False)

    def _matching_date(self, day: dt.date, forward: bool) -> dt.date:
        try:
            return _matching_date(self._day_expression, day, forward)
        except CroniterBadDateError:
            raise ScheduleError(self._never_fires()) from None

    def walls_after(self, wall: dt.datetime) -> Iterator[dt.datetime]:
        """Naive wall-clock times matching the expression, strictly after `wall`, ascending."""
        start = wall.replace(second=0, microsecond=0) + _MINUTE
        day = self._date_on_or_after(start.date())
        bounded = day == start.date()
        while True:
            hour_index = bisect.bisect_left(self.hours, start.hour) if bounded else 0
            for hour in self.hours[hour_index:]:
                minute_index = 0
                if bounded and hour == start.hour:
                    minute_index = bisect.bisect_left(self.minutes, start.minute)
                for minute in self.minutes[minute_index:]:
                    yield dt.datetime(day.year, day.month, day.day, hour, minute)
            day = self._date_on_or_after(day + _DAY)
            bounded = False

    def walls_before(self, wall: dt.datetime) -> Iterator[dt.datetime]:
        """Naive wall-clock times matching the expression, strictly before `wall`, descending."""
        floor = wall.replace(second=0, microsecond=0)
        end = floor - _MINUTE if floor == wall else floor
        day = self._date_on_or_before(end.date())
        bounded = day == end.date()
        while True:
            hour_index = bisect.bisect_right(self.hours, end.hour) if bounded else len(self.hours)
            for hour in reversed(self.hours[:hour_index]):
                minute_index = len(self.minutes)
                if bounded and hour == end.hour:
                    minute_index = bisect.bisect_right(self.minutes, end.minute)
                for minute in reversed(self.minutes[:minute_index]):
                    yield dt.datetime(day.year, day.month, day.day, hour, minute)
            day = self._date_on_or_before(day - _DAY)
            bounded = False

    # Wall time -> instants.

    def _offsets(self, wall: dt.datetime) -> tuple[dt.timedelta, dt.timedelta]:
        first = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        second = wall.replace(tzinfo=self.zone, fold=1).utcoffset()
        assert first is not None and second is not None  # a ZoneInfo always has an offset
        return first, second

    def instants(self, wall: dt.datetime) -> tuple[dt.datetime, ...]:
        """The UTC instants at which the wall time `wall` runs, by the DST rule above."""
        return self._map(wall)[2]

    def _map(self, wall: dt.datetime) -> tuple[dt.datetime, dt.datetime, tuple[dt.datetime, ...]]:
        """(earliest bound, latest bound, instants) of `wall`. No instant of `wall` or of a
        later wall time is before the earliest bound; none of `wall` or of an earlier wall
        time is after the latest bound. Both bounds grow with `wall`, which is what lets
        the tick iterators emit instants in order."""
        before, after = self._offsets(wall)
        if before == after:
            instant = _as_utc(wall, before)
            return instant, instant, (instant,)
        if before > after:  # repeated wall time: fold=0 is the first occurrence
            first, second = _as_utc(wall, before), _as_utc(wall, after)
            return first, second, ((first, second) if self.follows_real_time else (first,))
        end = self._gap_end(wall, before, after)
        return end, end, (() if self.follows_real_time else (end,))

    def _gap_end(self, wall: dt.datetime, before: dt.timedelta, after: dt.timedelta) -> dt.datetime:
        """The transition instant ending the gap that swallows `wall`: the first instant
        whose offset is `after`."""
        return _transition(self.time_zone, wall.date(), before, after, wall)

    def _offset_at(self, instant: dt.datetime) -> dt.timedelta:
        offset = instant.astimezone(self.zone).utcoffset()
        assert offset is not None
        return offset

    def _wall(self, instant: dt.datetime) -> dt.datetime:
        return instant.astimezone(self.zone).replace(tzinfo=None)

    # Ticks.

    def ticks_after(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """Tick instants (UTC) strictly after `after`, ascending, each once."""
        after = _require_aware(after, "after")
        here = self._offset_at(after)
        setback = max([here - self._offset_at(after + p) for p in _PROBES] + [dt.timedelta(0)])
        pending: list[dt.datetime] = []
        last: dt.datetime | None = None
        for wall in self.walls_after(self._wall(after) - setback - _MINUTE):
            bound, _, instants = self._map(wall)
            while pending and pending[0] <= bound:
                tick = heapq.heappop(pending)
                if tick > after and (last is None or tick > last):
                    last = tick
                    yield tick
            for instant in instants:
                heapq.heappush(pending, instant)

    def ticks_before(self, before: dt.datetime) -> Iterator[dt.datetime]:
        """Tick instants (UTC) at or before `before`, descending, each once."""
        before = _require_aware(before, "before")
        here = self._offset_at(before)
        ahead = max([self._offset_at(before - p) - here for p in _PROBES] + [dt.timedelta(0)])
        pending: list[tuple[dt.timedelta, dt.datetime]] = []  # max-heap by negated age
        last: dt.datetime | None = None
        for wall in self.walls_before(self._wall(before) + ahead + _MINUTE):
            _, bound, instants = self._map(wall)
            while pending and pending[0][1] >= bound:
                tick = heapq.heappop(pending)[1]
                if tick <= before and (last is None or tick < last):
                    last = tick
                    yield tick
            for instant in instants:
                heapq.heappush(pending, (_EPOCH_UTC - instant, instant))

    def next_tick(self, after: dt.datetime) -> dt.datetime:
        """The first tick strictly after `after`."""
        return next(self.ticks_after(after))

    def previous_tick(self, at_or_before: dt.datetime) -> dt.datetime:
        """The latest tick at or before `at_or_before`."""
        return next(self.ticks_before(at_or_before))

    def _never_fires(self) -> str:
        return (
            f"spec.schedule: {self.expression!r} never fires: no date within "
            f"{_MAX_DAYS_BETWEEN_TICKS // 366} years matches its day-of-month, month and "
            "day-of-week fields; check them (e.g. February has no 30th)"
        )


_TRANSITIONS: dict[tuple[str, dt.date, dt.timedelta, dt.timedelta], dt.datetime] = {}


def _transition(
    time_zone: str, day: dt.date, before: dt.timedelta, after: dt.timedelta, wall: dt.datetime
) -> dt.datetime:
    """Binary search over whole seconds (zoneinfo does not expose its transitions), cached:
    one gap per zone and day, whichever of its wall times asks."""
    key = (time_zone, day, before, after)
    cached = _TRANSITIONS.get(key)
    if cached is not None:
        return cached
    zone = zoneinfo.ZoneInfo(time_zone)
    low = _seconds(_as_utc(wall, after))  # before the transition
    high = _seconds(_as_utc(wall, before))  # at or after it
    while high - low > 1:
        middle = (low + high) // 2
        if (_EPOCH_UTC + dt.timedelta(seconds=middle)).astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    found = _EPOCH_UTC + dt.timedelta(seconds=high)
    if len(_TRANSITIONS) < 100_000:  # a few per zone and year: never near the bound
        _TRANSITIONS[key] = found
    return found


def _field_values(field: Sequence[int | str], size: int) -> tuple[int, ...]:
    if str(field[0]) == "*":
        return tuple(range(size))
    return tuple(sorted({int(v) for v in field}))


@lru_cache(maxsize=16384)
def _matching_date(day_expression: str, day: dt.date, forward: bool) -> dt.date:
    midnight = dt.datetime(day.year, day.month, day.day)
    if forward:
        found = croniter(
            day_expression, midnight - _MINUTE, max_years_between_matches=30
        ).get_next(dt.datetime)
    else:
        found = croniter(
            day_expression, midnight + _DAY, max_years_between_matches=30
        ).get_prev(dt.datetime)
    result: dt.date = found.date()
    if abs((result - day).days) > _MAX_DAYS_BETWEEN_TICKS:
        raise CroniterBadDateError("no matching date")
    return result


@lru_cache(maxsize=4096)
def compile_schedule(expression: str, time_zone: str = "UTC") -> Schedule:
    """The compiled schedule (cached per expression and zone). Raises ScheduleError."""
    return Schedule(expression, time_zone)


def next_tick(expression: str, time_zone: str, after: dt.datetime) -> dt.datetime:
    """The first tick of `expression` in `time_zone` strictly after `after`, in UTC."""
    return compile_schedule(expression, time_zone).next_tick(after)


def previous_tick(expression: str, time_zone: str, at_or_before: dt.datetime) -> dt.datetime:
    """The latest tick of `expression` in `time_zone` at or before `at_or_before`, in UTC."""
    return compile_schedule(expression, time_zone).previous_tick(at_or_before)


# Jitter.


def jitter_seconds(namespace: str, name: str, jitter: int) -> int:
    """The policy's stable delay in [0, jitter): from SHA-256 of `namespace/name`, so it is
    the same in every process and after every restart (Python's hash() is salted)."""
    if jitter <= 0:
        return 0
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % jitter


# Planning.


@dataclass(frozen=True)
class PolicyKey:
    """Which policy: its namespace and name (the jitter and the names derive from them)."""

    namespace: str
    name: str


Action = Literal["Run", "Wait", "Skip", "Idle", "Suspended"]


@dataclass(frozen=True)
class Missed:
    """Ticks newly given up by one plan: superseded by a newer due tick, or past the
    starting deadline. Add `count` to status.missedRuns."""

    count: int = 0
    """How many."""
    first: dt.datetime | None = None
    """The earliest (for the event message)."""
    last: dt.datetime | None = None
    """The latest."""
    is_lower_bound: bool = False
    """True when more than MISSED_COUNT_LIMIT ticks were missed and counting stopped."""


@dataclass(frozen=True)
class Plan:
    """What to do now. Times are aware UTC datetimes."""

    action: Action
    """Run: start `run` now. Wait: a tick is due but concurrencyPolicy Forbid holds it while
    `blocked_by` runs. Skip: the due tick missed its starting deadline. Idle: nothing due.
    Suspended: spec.suspend is set; ticks pass without running and without being counted."""
    handled_until: dt.datetime
    """The new cursor: every tick at or before it is handled. Persist it; pass it back as
    `since`."""
    jitter: int
    """This policy's jitter in seconds."""
    run: dt.datetime | None = None
    """Scheduled time (identity, no jitter) of the tick to start now."""
    run_name: str | None = None
    """RecoveryPoint name of `run`."""
    stop: tuple[str, ...] = ()
    """Active RecoveryPoints to stop before starting `run` (concurrencyPolicy Replace)."""
    waiting: dt.datetime | None = None
    """The due tick held back by Forbid; it starts when the active run ends, unless its
    starting deadline passes or a newer tick supersedes it first."""
    blocked_by: tuple[str, ...] = ()
    """Active RecoveryPoints holding back `waiting`."""
    missed: Missed = Missed()
    """Ticks newly given up."""
    next_tick: dt.datetime | None = None
    """Identity of the next tick not yet due (None while suspended)."""
    next_run_time: dt.datetime | None = None
    """When that tick's Job is due: next_tick + jitter. This is status.nextScheduleTime."""
    requeue_after: float | None = None
    """Seconds until the plan can change by the clock alone (the next due time, or the
    waiting tick's deadline); None while suspended. A change of the active points or of
    the spec calls for a new plan too."""


def plan_runs(
    spec: BackupPolicySpec,
    policy: PolicyKey,
    *,
    since: dt.datetime,
    now: dt.datetime,
    active: Sequence[str] = (),
) -> Plan:
    """Decide what the policy does at `now`.

    `since`: the persisted cursor (`Plan.handled_until` of the previous plan), or the
    policy's creationTimestamp before its first plan: only ticks after it are new.
    `active`: names of this policy's Pending or Running RecoveryPoints (scheduled or
    on-demand). Raises ScheduleError for a schedule that cannot produce ticks.

    Rules: of the ticks due in (since, now], only the latest may run; earlier ones are
    counted missed (like a CronJob after an outage). A tick is due at tick + jitter and
    misses its starting deadline when now > tick + jitter + startingDeadlineSeconds.
    Forbid holds a due tick while another point is active (it is counted missed only if
    its deadline passes or a newer tick supersedes it); Replace stops the active points
    and runs; Allow runs.
    """
    now = _require_aware(now, "now")
    since = _require_aware(since, "since")
    schedule = compile_schedule(spec.schedule, spec.time_zone)
    jitter = jitter_seconds(policy.namespace, policy.name, spec.jitter_seconds)
    delay = dt.timedelta(seconds=jitter)
    due_until = now - delay
    latest = schedule.previous_tick(due_until)

    if spec.suspend:
        return Plan("Suspended", handled_until=max(since, latest), jitter=jitter)

    upcoming = schedule.next_tick(due_until)
    timing = _Timing(upcoming, upcoming + delay, (upcoming + delay - now).total_seconds())
    if latest <= since:
        return timing.plan("Idle", handled_until=since, jitter=jitter)

    earlier = _ticks_between(schedule, since, latest)
    deadline = spec.starting_deadline_seconds
    expires = None if deadline is None else latest + delay + dt.timedelta(seconds=deadline)
    if expires is not None and now > expires:
        missed = Missed(earlier.count + 1, earlier.first or latest, latest, earlier.is_lower_bound)
        return timing.plan("Skip", handled_until=latest, jitter=jitter, missed=missed)

    name = recovery_point_name(policy.name, latest)
    others = tuple(sorted(set(active) - {name}))
    if name in active or not others or spec.concurrency_policy == "Allow":
        return timing.plan(
            "Run", handled_until=latest, jitter=jitter, run=latest, run_name=name, missed=earlier
        )
    if spec.concurrency_policy == "Replace":
        return timing.plan(
            "Run", handled_until=latest, jitter=jitter, run=latest, run_name=name,
            stop=others, missed=earlier,
        )
    requeue = timing.requeue_after
    if expires is not None:
        requeue = max(0.0, min(requeue, (expires - now).total_seconds()))
    return replace(
        timing.plan(
            "Wait", handled_until=earlier.last or since, jitter=jitter, waiting=latest,
            blocked_by=others, missed=earlier,
        ),
        requeue_after=requeue,
    )


@dataclass(frozen=True)
class _Timing:
    next_tick: dt.datetime
    next_run_time: dt.datetime
    requeue_after: float

    def plan(
        self,
        action: Action,
        *,
        handled_until: dt.datetime,
        jitter: int,
        run: dt.datetime | None = None,
        run_name: str | None = None,
        stop: tuple[str, ...] = (),
        waiting: dt.datetime | None = None,
        blocked_by: tuple[str, ...] = (),
        missed: Missed = Missed(),
    ) -> Plan:
        return Plan(
            action, handled_until=handled_until, jitter=jitter, run=run, run_name=run_name,
            stop=stop, waiting=waiting, blocked_by=blocked_by, missed=missed,
            next_tick=self.next_tick, next_run_time=self.next_run_time,
            requeue_after=max(0.0, self.requeue_after),
        )


def _ticks_between(schedule: Schedule, since: dt.datetime, latest: dt.datetime) -> Missed:
    """The ticks strictly between `since` and `latest`, as missed ticks."""
    count = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    for tick in schedule.ticks_after(since):
        if tick >= latest:
            break
        first = first or tick
        last = tick
        count += 1
        if count >= MISSED_COUNT_LIMIT:
            return Missed(count, first, schedule.previous_tick(latest - _TINY), True)
    return Missed(count, first, last)


_TINY: Final = dt.timedelta(microseconds=1)
