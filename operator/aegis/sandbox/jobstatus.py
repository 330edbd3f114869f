"""The status of a Job as the sandbox's Job runner writes it, the way the Job controller of
Kubernetes 1.31+ does: times, counts and conditions, pure (no API calls)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JsonDict = dict[str, Any]

log = logging.getLogger("aegis.sandbox.jobrunner")


DEFAULT_BACKOFF_LIMIT = 6
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_GRACE_SECONDS = 30


# --------------------------------------------------------------------------- Job status


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def condition(
    kind: str, reason: str, message: str, now: datetime, status: str = "True"
) -> JsonDict:
    stamp = rfc3339(now)
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }


FAILURE_MESSAGES = {
    "BackoffLimitExceeded": "Job has reached the specified backoff limit",
    "DeadlineExceeded": "Job was active longer than specified deadline",
}
COMPLETE_MESSAGE = "Reached expected number of succeeded pods"


def is_finished(job: JsonDict) -> bool:
    """True once the Job has a Complete or Failed condition that is True."""
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


@dataclass
class JobStatus:
    """The controller's view of one Job; ``to_api`` renders it as the real controller does."""

    start_time: datetime | None = None
    completion_time: datetime | None = None
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    conditions: list[JsonDict] = field(default_factory=list)

    @classmethod
    def from_api(cls, status: JsonDict | None) -> JobStatus:
        status = status or {}
        start = status.get("startTime")
        return cls(
            start_time=parse_rfc3339(start) if start else None,
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            conditions=list(status.get("conditions") or []),
        )

    def set_condition(self, new: JsonDict) -> None:
        for i, old in enumerate(self.conditions):
            if old.get("type") == new["type"]:
                if old.get("status") == new["status"]:
                    new = {**new, "lastTransitionTime": old.get("lastTransitionTime")}
                self.conditions[i] = new
                return
        self.conditions.append(new)

    def to_api(self) -> JsonDict:
        """A merge patch body for /status: zero counters are removed (``omitempty``)."""
        return {
            "startTime": rfc3339(self.start_time) if self.start_time else None,
            "completionTime": rfc3339(self.completion_time) if self.completion_time else None,
            "active": self.active or None,
            "ready": self.active,
            "terminating": 0,
            "succeeded": self.succeeded or None,
            "failed": self.failed or None,
            "uncountedTerminatedPods": {},
            "conditions": self.conditions or None,
        }


