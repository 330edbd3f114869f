"""The ports of the BackupPolicy reconcilers: what they need from the cluster, the object store,
the network and the clock, as Protocols. Production implementations are in
`aegis.reconcilers.policy_io`; unit tests pass plain in-memory classes.

Nothing here does I/O; the reconcilers (`policy_references`, `policy_status`, `policy_tick`,
`policy_catalog`) take these as arguments, so each can be tested without an API server.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from aegis.agent.manifest import Manifest
from aegis.api.common import S3Location

Body = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """Why a policy cannot back up (or cannot be scheduled) now: a CamelCase reason and a
    message naming the field and the fix. Never carries a secret value."""

    reason: str
    message: str


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SecretNotFound(LookupError):
    """The Secret does not exist."""


class StoreProblem(RuntimeError):
    """The object store refused or failed a request; `reason` is CamelCase."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PolicyCluster(Protocol):
    """The Kubernetes API as the policy reconcilers use it. Reads marked `cached` may come
    from the watch cache; writes always go to the API server."""

    def get_policy(self, namespace: str, name: str, *, cached: bool) -> Body | None:
        """The BackupPolicy object, or None when it does not exist."""
        ...

    def list_points(self, namespace: str, policy: str, *, cached: bool) -> list[Body]:
        """The policy's RecoveryPoints (those whose spec.policyRef names it)."""
        ...

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes]:
        """A Secret's data (from the watch cache when it holds it). Raises SecretNotFound."""
        ...

    def create_point(self, namespace: str, body: Body) -> tuple[Body, bool]:
        """Create a RecoveryPoint, or return the existing one of that name: (object, created)."""
        ...

    def delete_point(self, namespace: str, name: str) -> bool:
        """Delete a RecoveryPoint; False when it was already gone."""
        ...

    def annotate_point(self, namespace: str, name: str, annotations: dict[str, str]) -> None: ...

    def patch_point_status(self, namespace: str, name: str, status: Body) -> None: ...

    def patch_policy_status(self, namespace: str, name: str, status: Body) -> None:
        """Merge-patch the policy's status (fields not named are kept)."""
        ...

    def create_job(self, namespace: str, job: Body) -> tuple[Body, bool]:
        """Create the Job, or return the existing one of that name: (job, created)."""
        ...

    def get_job(self, namespace: str, name: str) -> Body | None: ...

    def delete_job(self, namespace: str, name: str) -> bool: ...

    def post_event(self, involved: Body, event_type: str, reason: str, message: str) -> None:
        """Best effort: never raises."""
        ...


class PointRunner(Protocol):
    """The RecoveryPoint lifecycle the scheduler hands a run to once its Job exists (the
    point's own reconciler: one writer of a point's run state)."""

    def start(self, point: Body) -> None:
        """Create the point's Job (or find it) and record it in the point."""
        ...

    def started(self, point: Body, job: Body) -> None:
        """A Job the scheduler created for the point exists: record it, fold it in if it
        has already ended."""
        ...


class PolicyStore(Protocol):
    """The object store of a policy's S3Location (credentials resolved by the adapter)."""

    def head_bucket(self, location: S3Location, namespace: str) -> None:
        """Raises StoreProblem when the bucket cannot be used."""
        ...

    def list_manifest_keys(self, location: S3Location, namespace: str, policy: str) -> list[str]:
        """Keys of the policy's manifests under the location. Raises StoreProblem."""
        ...

    def read_manifest(self, location: S3Location, namespace: str, key: str) -> Manifest:
        """Raises StoreProblem or ManifestError."""
        ...


class Reach(Protocol):
    def __call__(self, host: str, port: int) -> str | None:
        """None when a TCP connection to host:port opens, else why not (no secrets)."""
        ...
