"""In-memory copies of the objects the operator watches, fed by kopf's watch events (an
informer, in client-go's terms). The scheduler and the status refresh read policies and
their points from here instead of asking the API server for them at every tick."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

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

    def policy(self, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self._policies.get((namespace, name))


CACHE = PointCache()
