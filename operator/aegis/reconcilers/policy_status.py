"""A BackupPolicy's status from its points: counts, last success and failure, RPO, retention
pruning, and the conditions (Ready, Scheduling, RPOMet, RecoveryTested) written in one patch.

RecoveryTested is derived from `status.lastDrill.lastPassedTime` (written by the DRDrill
runs) and the clock at every refresh, so it turns False when the window passes without any
drill event. Like RPOMet it is informational: kstatus and Argo CD read Ready only.

`summarize` and `conditions` are pure; `refresh` does the I/O through the cluster port and is
the only writer of the policy's conditions once its spec is valid (the kopf handler writes
Ready=False for an invalid spec, which `refresh` leaves alone).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from aegis import display, metrics
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.labels import PRUNED_ANNOTATION
from aegis.reconcilers import retention
from aegis.reconcilers.backup import parse_time
from aegis.reconcilers.conditions import ConditionUpdate, find, is_true, set_conditions
from aegis.reconcilers.policy_ports import Body, PolicyCluster


def point_info(point: Body) -> retention.PointInfo:
    status = point.get("status") or {}
    return retention.PointInfo(
        name=point["metadata"]["name"],
        phase=status.get("phase"),
        source_time=parse_time(status.get("sourceTime")),
        verified=is_true(status.get("conditions"), "Verified"),
        locked_until=parse_time(status.get("lockedUntil")),
        created=parse_time(point["metadata"].get("creationTimestamp")),
    )


def summarize(
    points: list[Body], spec: BackupPolicySpec, now: dt.datetime
) -> tuple[dict[str, Any], ConditionUpdate]:
    """Status fields and the RPOMet condition from the policy's points."""
    completed = [p for p in points if (p.get("status") or {}).get("phase") == "Completed"]
    failed = [p for p in points if (p.get("status") or {}).get("phase") in ("Failed", "Corrupted")]

    def newest(items: list[Body], field: str) -> Body | None:
        dated = [
            (when, p) for p in items if (when := parse_time((p.get("status") or {}).get(field)))
        ]
        return max(dated, key=lambda tp: tp[0])[1] if dated else None

    # Every field is written (None clears it): a summary is complete on its own.
    status: dict[str, Any] = {
        "recoveryPoints": len(points),
        "lastRecoveryPoint": None,
        "lastSuccessfulTime": None,
        "lastFailureTime": None,
    }
    newest_source = newest(completed, "sourceTime")
    newest_done = newest(completed, "completionTime")
    newest_failed = newest(failed, "completionTime")
    created = [(parse_time(p["metadata"].get("creationTimestamp")), p) for p in points]
    latest = max(((t, p) for t, p in created if t), key=lambda tp: tp[0], default=None)
    if latest:
        status["lastRecoveryPoint"] = latest[1]["metadata"]["name"]
    if newest_done:
        status["lastSuccessfulTime"] = newest_done["status"]["completionTime"]
    if newest_failed:
        status["lastFailureTime"] = newest_failed["status"]["completionTime"]
    objective = spec.objectives.rpo_seconds if spec.objectives else None
    if newest_source is None:
        status["currentRPOSeconds"] = None
        status["display"] = {"rpo": None}
        condition = ConditionUpdate(
            "RPOMet",
            "False" if objective else "Unknown",
            "NoRecoveryPoint",
            "No Completed recovery point yet",
        )
        return status, condition
    source_time = parse_time(newest_source["status"]["sourceTime"])
    assert source_time is not None
    rpo = max(0, int((now - source_time).total_seconds()))
    status["currentRPOSeconds"] = rpo
    status["display"] = {"rpo": display.duration(rpo)}
    if objective is None:
        condition = ConditionUpdate(
            "RPOMet",
            "Unknown",
            "NoObjective",
            f"Current RPO {rpo}s; set spec.objectives.rpoSeconds",
        )
    elif rpo <= objective:
        condition = ConditionUpdate(
            "RPOMet", "True", "WithinObjective", f"Current RPO {rpo}s ≤ objective {objective}s"
        )
    else:
        condition = ConditionUpdate(
            "RPOMet",
            "False",
            "RPOBreached",
            f"Current RPO {rpo}s exceeds the objective {objective}s: the newest Completed point "
            f"{newest_source['metadata']['name']} is from {newest_source['status']['sourceTime']}",
        )
    return status, condition


RECOVERY_TESTED = "RecoveryTested"


def recovery_tested(
    last_drill: dict[str, Any] | None, window_seconds: int, now: dt.datetime
) -> ConditionUpdate:
    """True while a drill of the policy's points passed within the window, False otherwise
    (never tested, the last pass too old, or only failed runs)."""
    drill = last_drill or {}
    window = _duration(window_seconds)
    passed = parse_time(drill.get("lastPassedTime"))
    if passed is None:
        failed = ""
        if drill.get("result") == "Failed":
            failed = f"; the last run (drill/{drill.get('drill')}) failed: {drill.get('reason')}"
        return ConditionUpdate(
            RECOVERY_TESTED, "False", "NeverTested",
            "No DRDrill has restored one of this policy's points and passed" + failed
            + "; create a restore DRDrill with a schedule (docs/drills.md)",
        )
    # Messages depend on the clock only through the window's verdict, so the periodic
    # comparison with the current condition does not rewrite status as time passes.
    age = now - passed
    by = f"drill/{drill.get('lastPassedDrill') or '?'}"
    stamp = passed.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    if age > dt.timedelta(seconds=window_seconds):
        return ConditionUpdate(
            RECOVERY_TESTED, "False", "RecoveryTestOverdue",
            f"The last passed drill ({by}) ended at {stamp}, more than "
            f"spec.recoveryTestWindowSeconds ({window}) ago",
        )
    return ConditionUpdate(
        RECOVERY_TESTED, "True", "DrillPassed",
        f"{by} passed at {stamp}, within spec.recoveryTestWindowSeconds ({window})",
    )


def recovery_tested_of(body: Body, spec: BackupPolicySpec, now: dt.datetime) -> ConditionUpdate:
    """RecoveryTested of a policy object as it stands."""
    last = (body.get("status") or {}).get("lastDrill")
    return recovery_tested(last, spec.recovery_test_window_seconds, now)


def _duration(seconds: float) -> str:
    total = int(max(0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m" if minutes else f"{total}s"


def prune(
    cluster: PolicyCluster,
    namespace: str,
    spec: BackupPolicySpec,
    points: list[Body],
    now: dt.datetime,
) -> list[str]:
    """Delete the points retention gives up; their finalizer removes the bucket objects."""
    pruned = []
    by_name = {p["metadata"]["name"]: p for p in points}
    for name in retention.select_prunable(
        [point_info(p) for p in points], spec.retention, spec.time_zone, now
    ):
        if by_name[name]["metadata"].get("deletionTimestamp"):
            continue
        cluster.annotate_point(namespace, name, {PRUNED_ANNOTATION: "retention"})
        cluster.patch_point_status(
            namespace, name, {"phase": "Expired", "message": "pruned by retention"}
        )
        cluster.delete_point(namespace, name)
        pruned.append(name)
    return pruned


@dataclass(frozen=True)
class Refreshed:
    status: dict[str, Any]
    pruned: list[str]
    written: bool
    """False when the status was already what it would be written as (no API call)."""


def unchanged(previous: dict[str, Any], status: dict[str, Any]) -> bool:
    """True when writing `status` (a merge patch: None clears) would change nothing a user
    can see in `previous`."""
    return all(previous.get(field) == value for field, value in status.items())


def refresh(
    cluster: PolicyCluster,
    body: Body,
    spec: BackupPolicySpec,
    points: list[Body],
    updates: list[ConditionUpdate],
    now: dt.datetime,
    along: dict[str, Any] | None = None,
) -> Refreshed:
    """Prune, recompute the status from the points, and write it with `updates` (Ready,
    Scheduling) and RPOMet in one patch, only when it differs from the policy's status (at
    rest, a policy with no new point costs no write; one with points, a currentRPOSeconds
    refresh as often as the caller asks: once per status period). Posts Pruned and
    RPOBreached events. The metrics are set from the points either way (the RPO gauge is
    computed at scrape time, not read from status). `along`: fields written with the status
    when it is written anyway, never a reason to write (a suspended policy's cursor)."""
    meta = body["metadata"]
    namespace, policy = meta["namespace"], meta["name"]
    pruned = prune(cluster, namespace, spec, points, now)
    if pruned:
        cluster.post_event(
            body,
            "Normal",
            "Pruned",
            f"Retention pruned {len(pruned)} point(s): {', '.join(pruned)}",
        )
        points = [p for p in points if p["metadata"]["name"] not in pruned]
    status, rpo = summarize(points, spec, now)
    previous = body.get("status") or {}
    tested = recovery_tested_of(body, spec, now)
    status["conditions"] = set_conditions(
        previous.get("conditions"),
        [*updates, rpo, tested],
        generation=meta.get("generation"),
        now=now,
    )
    status["observedGeneration"] = meta.get("generation")
    written = not unchanged(previous, status)
    if written:
        cluster.patch_policy_status(namespace, policy, {**status, **(along or {})})
    metrics.export_policy(body, points)
    was = find(previous.get("conditions"), "RPOMet")
    if rpo.reason == "RPOBreached" and (was is None or was.get("status") != "False"):
        cluster.post_event(body, "Warning", "RPOBreached", rpo.message)
    tested_before = find(previous.get("conditions"), RECOVERY_TESTED)
    if tested.reason == "RecoveryTestOverdue" and (
        tested_before is None or tested_before.get("reason") != tested.reason
    ):
        cluster.post_event(body, "Warning", tested.reason, tested.message)
    for update in updates:
        before = find(previous.get("conditions"), update.type)
        if update.status == "False" and (before is None or before.get("reason") != update.reason):
            cluster.post_event(body, "Warning", update.reason, update.message)
    return Refreshed(status, pruned, written)
