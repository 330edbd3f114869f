"""Which RecoveryPoints the operator made, and which a user may not make.

`trigger: Scheduled` points belong to the scheduler and `trigger: Imported` points to catalog
sync: each carries the CREATED_BY annotation the operator sets when it creates it. A user's
point with either trigger would be a run nobody starts (Scheduled) or a Completed point with
no evidence behind it (Imported); `refusal` says why such a point is refused.

Why an annotation and not an ownerReference to the policy: an owner's deletion garbage-
collects its dependents, and deleting a policy must keep its RecoveryPoints (and, under
deletionPolicy Delete, their backups). The annotation marks intent, not authority: RBAC on
RecoveryPoints is what decides who may create them.

Pure functions: no kopf, no API calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from aegis.labels import CREATED_BY_ANNOTATION

CREATED_BY: Final = CREATED_BY_ANNOTATION
SCHEDULER: Final = "scheduler"
CATALOG_SYNC: Final = "catalog-sync"

Creator = Literal["scheduler", "catalog-sync"]

_CREATOR_OF_TRIGGER: Final[dict[str, str]] = {"Scheduled": SCHEDULER, "Imported": CATALOG_SYNC}


def marks(creator: Creator) -> dict[str, str]:
    """The annotations the operator sets on a point it creates."""
    return {CREATED_BY: creator}


def created_by(point: dict[str, Any]) -> str | None:
    annotations = (point.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(CREATED_BY)
    return value if isinstance(value, str) else None


def is_scheduler_point(point: dict[str, Any]) -> bool:
    """True for a point the scheduler created for a tick."""
    spec = point.get("spec") or {}
    return spec.get("trigger") == "Scheduled" and created_by(point) == SCHEDULER


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def refusal(point: dict[str, Any]) -> Refusal | None:
    """Why this point is refused, or None when it may proceed.

    A Scheduled or Imported point without the operator's mark is refused, unless the
    operator has already written its status (a point from before the mark existed: its
    status is the operator's, users cannot write it)."""
    spec = point.get("spec") or {}
    trigger = spec.get("trigger") or "Manual"
    creator = _CREATOR_OF_TRIGGER.get(trigger)
    if creator is None or created_by(point) == creator:
        return None
    status = point.get("status") or {}
    if status.get("jobName") or status.get("manifest"):
        return None
    if trigger == "Scheduled":
        message = (
            "spec.trigger: Scheduled is reserved for points the scheduler creates at a tick; "
            "for a backup now, create the point without spec.trigger (Manual) or run "
            f"`kubectl aegis backup {spec.get('policyRef', {}).get('name') or 'POLICY'}"
            f" -n {(point.get('metadata') or {}).get('namespace')}`"
        )
    else:
        message = (
            "spec.trigger: Imported is reserved for points catalog sync rebuilds from a "
            "manifest in the bucket; it carries no evidence here. To take a backup, create the "
            "point without spec.trigger (Manual)"
        )
    return Refusal(f"Trigger{trigger}Reserved", message)
