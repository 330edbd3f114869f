"""In-memory copies of the objects the operator watches, fed by kopf's watch events (an
informer, in client-go's terms). The scheduler and the status refresh read policies and
their points from here instead of asking the API server for them at every tick."""

from __future__ import annotations

import base64
import threading
from collections import defaultdict
from typing import Any, Final

Body = dict[str, Any]


class PointCache:
    """RecoveryPoints by (namespace, policy), and BackupPolicies by (namespace, name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._points: defaultdict[tuple[str, str], dict[str, Body]] = defaultdict(dict)
        self._policies: dict[tuple[str, str], Body] = {}

    def point_event(self, event_type: str | None, body: Body) -> None:
        meta = body.get("metadata") or {}
        policy = ((body.get("spec") or {}).get("policyRef") or {}).get("name")
        if not policy:
            return
        key = (meta.get("namespace", ""), policy)
        with self._lock:
            if event_type == "DELETED":
                self._points[key].pop(meta.get("name", ""), None)
            else:
                self._points[key][meta.get("name", "")] = body

    def policy_event(self, event_type: str | None, body: Body) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            if event_type == "DELETED":
                self._policies.pop(key, None)
            else:
                self._policies[key] = body

    def points(self, namespace: str, policy: str) -> list[Body]:
        with self._lock:
            return list(self._points.get((namespace, policy), {}).values())

    def policies_in(self, namespace: str) -> list[Body]:
        with self._lock:
            return [b for (ns, _), b in self._policies.items() if ns == namespace]

    def policy(self, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self._policies.get((namespace, name))


class SecretCache:
    """Secrets by (namespace, name), fed by a watch, so that re-checking a thousand policies'
    references costs no API call and a deleted Secret is seen at the next check.

    Values are kept as the API sends them (base64) and decoded on read; they are secrets:
    never log them. A Secret larger than `max_bytes` (a Helm release, a CA bundle) is not
    kept: readers fall back to a GET for it."""

    TOO_LARGE: Final = object()

    def __init__(self, max_bytes: int = 65536) -> None:
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        self._secrets: dict[tuple[str, str], dict[str, str] | object] = {}

    def event(self, event_type: str | None, body: Body) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            if event_type == "DELETED":
                self._secrets.pop(key, None)
                return
            data = dict(body.get("data") or {})
            size = sum(len(k) + len(v or "") for k, v in data.items())
            self._secrets[key] = data if size <= self._max_bytes else self.TOO_LARGE

    def get(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The Secret's data decoded, or None when the cache does not hold it (never seen,
        deleted, or too large): ask the API server then."""
        with self._lock:
            found = self._secrets.get((namespace, name))
        if not isinstance(found, dict):
            return None
        return {k: base64.b64decode(v or "") for k, v in found.items()}
