"""Conditions as the Kubernetes API conventions define them: one entry per type, whose
lastTransitionTime moves only when the status changes.

Every status write goes through `set_conditions`, which also derives the two kstatus
conditions (sigs.k8s.io/cli-utils kstatus, read by Flux health checks, `kubectl wait` and
Argo CD) from each kind's own conditions, so no code path can forget them:

- ``Stalled=True`` when the object will not get further without someone acting: ``Ready``
  or ``Accepted`` False (a refused spec, a missing Secret or bucket), or a one-shot object
  that ended badly (``Failed``/``Corrupted`` True, ``Complete``/``Succeeded`` False);
- ``Reconciling=True`` while the operator is still at work: ``Ready`` or ``Complete``
  Unknown, or an accepted one-shot object that has not finished;
- neither once the object is settled. They are "abnormal-true" conditions, so they are
  removed rather than kept as False, as kstatus recommends.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: Status
    reason: str
    message: str


def iso(time: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second, as Kubernetes writes times."""
    return time.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_conditions(
    current: list[dict[str, Any]] | None,
    updates: list[ConditionUpdate],
    *,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Return `current` with `updates` applied. Types not updated are kept as they are."""
    result = [dict(c) for c in current or []]
    by_type = {c.get("type"): c for c in result}
    for update in updates:
        existing = by_type.get(update.type)
        entry: dict[str, Any] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": iso(now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        if existing is None:
            result.append(entry)
            by_type[update.type] = entry
            continue
        if existing.get("status") == update.status and existing.get("lastTransitionTime"):
            entry["lastTransitionTime"] = existing["lastTransitionTime"]
        existing.clear()
        existing.update(entry)
    return _with_kstatus(result, now)


KSTATUS_TYPES = ("Stalled", "Reconciling")


def _kstatus(by_type: dict[Any, dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """Which kstatus condition the kind's own conditions imply, and the condition it echoes."""

    def status(type_: str) -> str | None:
        found = by_type.get(type_)
        return None if found is None else str(found.get("status"))

    for gate in ("Ready", "Accepted"):
        if status(gate) == "False":
            return "Stalled", by_type[gate]
    for bad in ("Corrupted", "Failed"):
        if status(bad) == "True":
            return "Stalled", by_type[bad]
    # One-shot kinds end with Complete (points, restores) or Succeeded (approvals).
    for outcome in ("Complete", "Succeeded"):
        if status(outcome) == "False":
            return "Stalled", by_type[outcome]
    if status("Ready") == "Unknown":
        return "Reconciling", by_type["Ready"]
    for outcome in ("Complete", "Succeeded"):
        if status(outcome) == "Unknown":
            return "Reconciling", by_type[outcome]
    if (
        "Ready" not in by_type
        and status("Accepted") == "True"
        and not {"Complete", "Succeeded"} & by_type.keys()
    ):
        return "Reconciling", by_type["Accepted"]
    return None


def _with_kstatus(result: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in result if c.get("type") in KSTATUS_TYPES}
    kept = [c for c in result if c.get("type") not in KSTATUS_TYPES]
    implied = _kstatus({c.get("type"): c for c in kept})
    if implied is None:
        return kept
    type_, source = implied
    entry: dict[str, Any] = {
        "type": type_,
        "status": "True",
        "reason": source.get("reason") or type_,
        "message": source.get("message") or "",
        "lastTransitionTime": iso(now),
    }
    if source.get("observedGeneration") is not None:
        entry["observedGeneration"] = source["observedGeneration"]
    before = previous.get(type_)
    if before is not None and before.get("status") == "True" and before.get("lastTransitionTime"):
        entry["lastTransitionTime"] = before["lastTransitionTime"]
    return [*kept, entry]


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == "True"
