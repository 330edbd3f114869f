"""Conditions as the Kubernetes API conventions define them: one entry per type, whose
lastTransitionTime moves only when the status changes."""

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
    return result


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == "True"
