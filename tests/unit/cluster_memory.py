"""An in-memory cluster implementing the cluster ports of the RecoveryPoint, Restore and
FailoverPlan reconcilers (`recoverypoint.Cluster`, `restore.Cluster`,
`failoverplan.PlanCluster`), as `aegis.k8s.adapters.ApiCluster` does over the API server:
plain dicts keyed by (kind, name) in one namespace-agnostic store, status patches merged as
JSON merge patches (None removes a key), every write counted."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aegis.k8s.jobs import Termination

Body = dict[str, Any]


def merge(target: Body, patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def custom(kind: str, name: str, spec: Body, namespace: str = "shop", **status: Any) -> Body:
    return {
        "apiVersion": "dr.aegis.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": spec,
        "status": dict(status),
    }


class MemoryCluster:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Body] = {}
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.jobs: dict[str, Body] = {}
        self.terminations: dict[str, Termination] = {}
        self.messages: dict[str, str] = {}
        self.events: list[tuple[str, str, str, str, str | None]] = []
        self.status_writes: dict[tuple[str, str], int] = {}
        self.annotation_writes = 0

    # --- helpers for tests

    def add(self, body: Body) -> Body:
        self.objects[(body["kind"], body["metadata"]["name"])] = body
        return body

    def status_of(self, kind: str, name: str) -> Body:
        status: Body = self.objects[(kind, name)].setdefault("status", {})
        return status

    def reasons(self, name: str | None = None) -> list[str]:
        return [reason for who, _, reason, _, _ in self.events if name in (None, who)]

    def _get(self, kind: str, name: str) -> Body | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    def _patch(self, kind: str, name: str, status: Body) -> None:
        if (kind, name) not in self.objects:
            raise LookupError(f"{kind} {name} not found")
        self.status_writes[(kind, name)] = self.status_writes.get((kind, name), 0) + 1
        merge(self.status_of(kind, name), status)

    def _list(self, kind: str) -> list[Body]:
        return [copy.deepcopy(b) for (k, _), b in self.objects.items() if k == kind]

    # --- BackupPolicy, RecoveryPoint, Secrets

    def get_policy(self, namespace: str, name: str) -> Body | None:
        return self._get("BackupPolicy", name)

    def get_point(self, namespace: str, name: str) -> Body | None:
        return self._get("RecoveryPoint", name)

    def list_points(self, namespace: str) -> list[Body]:
        return self._list("RecoveryPoint")

    def patch_point_status(self, namespace: str, name: str, status: Body) -> None:
        self._patch("RecoveryPoint", name, status)

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        found = self.secrets.get(name)
        return dict(found) if found is not None else None

    # --- Jobs

    def get_job(self, namespace: str, name: str) -> Body | None:
        return copy.deepcopy(self.jobs.get(name))

    def create_job(self, namespace: str, job: Body) -> tuple[Body, bool]:
        name = job["metadata"]["name"]
        if name in self.jobs:
            return copy.deepcopy(self.jobs[name]), False
        self.jobs[name] = copy.deepcopy(job)
        return copy.deepcopy(job), True

    def termination(self, namespace: str, job_name: str) -> Termination | None:
        return self.terminations.get(job_name)

    def termination_message(self, namespace: str, job_name: str) -> str | None:
        return self.messages.get(job_name)

    # --- Restore

    def get_restore(self, namespace: str, name: str) -> Body | None:
        return self._get("Restore", name)

    def patch_restore_status(self, namespace: str, name: str, status: Body) -> None:
        self._patch("Restore", name, status)

    # --- FailoverPlan, FailoverApproval

    def get_plan(self, namespace: str, name: str) -> Body | None:
        return self._get("FailoverPlan", name)

    def patch_plan_status(self, namespace: str, name: str, status: Body) -> None:
        self._patch("FailoverPlan", name, status)

    def annotate_plan(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        self.annotation_writes += 1
        meta = self.objects[("FailoverPlan", name)]["metadata"]
        merge(meta.setdefault("annotations", {}), annotations)

    def list_approvals(self, namespace: str) -> list[Body]:
        return self._list("FailoverApproval")

    def patch_approval_status(self, namespace: str, name: str, status: Body) -> None:
        self._patch("FailoverApproval", name, status)

    def secret_reader(self, namespace: str) -> Any:
        return None  # the probes of these tests read no Secret

    def workloads(self, namespace: str, reachable: Sequence[str]) -> Any:
        return None

    def plan_jobs(
        self,
        plan: Mapping[str, Any],
        transition_id: str | None,
        admit: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> Any:
        return None

    # --- events

    def post_event(
        self, involved: Body, event_type: str, reason: str, message: str, key: str | None = None
    ) -> None:
        name = involved["metadata"]["name"]
        if key is not None and any(e[0] == name and e[4] == key for e in self.events):
            return  # a keyed event is told once
        self.events.append((name, event_type, reason, message, key))
