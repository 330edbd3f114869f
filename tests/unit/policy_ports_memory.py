"""In-memory implementations of the policy ports (aegis.reconcilers.policy_ports), for unit
tests of the policy reconcilers without an API server: plain classes holding dicts."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

from aegis.agent.manifest import Manifest
from aegis.api.common import S3Location
from aegis.reconcilers.policy_ports import SecretNotFound, StoreProblem

Body = dict[str, Any]


class MemoryCluster:
    def __init__(self) -> None:
        self.policies: dict[tuple[str, str], Body] = {}
        self.points: dict[tuple[str, str], Body] = {}
        self.secrets: dict[tuple[str, str], dict[str, bytes]] = {}
        self.jobs: dict[tuple[str, str], Body] = {}
        self.events: list[tuple[str, str, str, str]] = []
        self.policy_patches: list[Body] = []

    # policies and points
    def add_policy(self, namespace: str, name: str, spec: Body, created: str) -> Body:
        body = {
            "apiVersion": "dr.aegis.dev/v1alpha1",
            "kind": "BackupPolicy",
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": created,
            },
            "spec": spec,
            "status": {},
        }
        self.policies[(namespace, name)] = body
        return body

    def get_policy(self, namespace: str, name: str, *, cached: bool) -> Body | None:
        body = self.policies.get((namespace, name))
        return copy.deepcopy(body) if body else None

    def list_points(self, namespace: str, policy: str, *, cached: bool) -> list[Body]:
        return [
            copy.deepcopy(p)
            for (ns, _), p in self.points.items()
            if ns == namespace and p["spec"]["policyRef"]["name"] == policy
        ]

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes]:
        try:
            return dict(self.secrets[(namespace, name)])
        except KeyError:
            raise SecretNotFound(name) from None

    def create_point(self, namespace: str, body: Body) -> tuple[Body, bool]:
        key = (namespace, body["metadata"]["name"])
        if key in self.points:
            return copy.deepcopy(self.points[key]), False
        stored = copy.deepcopy(body)
        stored["metadata"].setdefault("uid", f"uid-{key[1]}")
        stored["metadata"].setdefault("generation", 1)
        stored.setdefault("status", {})
        self.points[key] = stored
        return copy.deepcopy(stored), True

    def delete_point(self, namespace: str, name: str) -> bool:
        return self.points.pop((namespace, name), None) is not None

    def annotate_point(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.points[(namespace, name)]["metadata"].setdefault("annotations", {}).update(annotations)

    def patch_point_status(self, namespace: str, name: str, status: Body) -> None:
        self.points[(namespace, name)].setdefault("status", {}).update(copy.deepcopy(status))

    def patch_policy_status(self, namespace: str, name: str, status: Body) -> None:
        self.policy_patches.append(copy.deepcopy(status))
        target = self.policies[(namespace, name)].setdefault("status", {})
        for key, value in status.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = copy.deepcopy(value)

    def create_job(self, namespace: str, job: Body) -> tuple[Body, bool]:
        key = (namespace, job["metadata"]["name"])
        if key in self.jobs:
            return self.jobs[key], False
        self.jobs[key] = copy.deepcopy(job)
        return self.jobs[key], True

    def get_job(self, namespace: str, name: str) -> Body | None:
        return self.jobs.get((namespace, name))

    def delete_job(self, namespace: str, name: str) -> bool:
        return self.jobs.pop((namespace, name), None) is not None

    def post_event(self, involved: Body, event_type: str, reason: str, message: str) -> None:
        self.events.append((involved["metadata"]["name"], event_type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, _, reason, _ in self.events]


class MemoryRunner:
    """PointRunner: records the Job in the point, as the point's reconciler does."""

    def __init__(self, cluster: MemoryCluster, build: Any) -> None:
        self.cluster = cluster
        self.build = build
        self.started_points: list[str] = []

    def start(self, point: Body) -> None:
        job, _ = self.cluster.create_job(point["metadata"]["namespace"], self.build(point))
        self.started(point, job)

    def started(self, point: Body, job: Body) -> None:
        meta = point["metadata"]
        self.started_points.append(meta["name"])
        self.cluster.patch_point_status(
            meta["namespace"],
            meta["name"],
            {"phase": "Running", "jobName": job["metadata"]["name"]},
        )


class MemoryStore:
    def __init__(self) -> None:
        self.buckets: set[str] = set()
        self.manifests: dict[tuple[str, str], Manifest] = {}
        self.heads = 0

    def head_bucket(self, location: S3Location, namespace: str) -> None:
        self.heads += 1
        if location.bucket not in self.buckets:
            raise StoreProblem("BucketNotFound", f"bucket {location.bucket} does not exist")

    def list_manifest_keys(self, location: S3Location, namespace: str, policy: str) -> list[str]:
        return sorted(k for b, k in self.manifests if b == location.bucket)

    def read_manifest(self, location: S3Location, namespace: str, key: str) -> Manifest:
        return self.manifests[(location.bucket, key)]


class Reachable:
    def __init__(self) -> None:
        self.down: set[tuple[str, int]] = set()
        self.calls = 0

    def __call__(self, host: str, port: int) -> str | None:
        self.calls += 1
        return "Connection refused" if (host, port) in self.down else None


class ManualClock:
    def __init__(self, now: dt.datetime) -> None:
        self.current = now

    def now(self) -> dt.datetime:
        return self.current


def key_bytes() -> bytes:
    return base64.b64encode(bytes(range(32)))
