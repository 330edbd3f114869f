"""The production implementations of the policy ports (`policy_ports`): the Kubernetes API
(reads from the watch caches where allowed), S3 through boto3, TCP connects, and the
RecoveryPoint reconciler as the runner of started points."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable
from typing import Any

from aegis.agent.manifest import Manifest
from aegis.api import BACKUP_POLICY, RECOVERY_POINT
from aegis.api.common import S3Location
from aegis.cloud import s3
from aegis.k8s import objects
from aegis.k8s.adapters import ApiCluster
from aegis.k8s.cache import PointCache, SecretCache, SharedListing
from aegis.k8s.jobs import job_outcome
from aegis.reconcilers import naming
from aegis.reconcilers import recoverypoint as points
from aegis.reconcilers.policy_ports import Body, PolicyCluster, SecretNotFound, StoreProblem
from aegis.settings import Settings


def _policy_of(point: Body) -> str | None:
    name = ((point.get("spec") or {}).get("policyRef") or {}).get("name")
    return name if isinstance(name, str) else None


def _points_of_policy(namespace: str, policy: str) -> list[Body]:
    selector = f"{naming.POLICY_LABEL}={naming.label_value(policy)}"
    points = objects.list_custom(RECOVERY_POINT, namespace, selector)
    return [p for p in points if _policy_of(p) == policy]


class KubeCluster:
    """PolicyCluster over the API server, with policies, points and Secrets from the watch
    caches when `cached`; Secrets through the SecretCache (one the cache lacks is read from the
    API server once, then kept current by the watch). Uncached lists of points made at the
    same time (the first look at each policy after start-up) share one LIST of the
    namespace (`SharedListing`), and once the watch cache holds everything such a LIST
    returned, they read the cache."""

    def __init__(self, objects_cache: PointCache, secrets: SecretCache) -> None:
        self._cache = objects_cache
        self._secrets = secrets
        self._points = SharedListing(_points_of_policy, self._points_of_namespace, _policy_of)

    def _points_of_namespace(self, namespace: str) -> list[Body]:
        points = objects.list_custom(RECOVERY_POINT, namespace)
        self._cache.expect(namespace, {p["metadata"]["name"] for p in points})
        return points

    def get_policy(self, namespace: str, name: str, *, cached: bool) -> Body | None:
        body = self._cache.policy(namespace, name) if cached else None
        if body is not None:
            return body
        try:
            return objects.get_custom(BACKUP_POLICY, namespace, name)
        except objects.NotFound:
            return None

    def list_points(self, namespace: str, policy: str, *, cached: bool) -> list[Body]:
        # Uncached: the watch cache may still be taking in kopf's start-up listing. Once it
        # holds every point a LIST of the namespace returned, it is as good as a LIST (a point
        # created since then reaches it as at any later look).
        if cached or self._cache.covers(namespace):
            return self._cache.points(namespace, policy)
        return self._points.get(namespace, policy)

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes]:
        try:
            return objects.read_secret(namespace, name, self._secrets)
        except objects.NotFound:
            raise SecretNotFound(f"Secret {namespace}/{name} not found") from None

    def create_point(self, namespace: str, body: Body) -> tuple[Body, bool]:
        return objects.create_custom(RECOVERY_POINT, namespace, body)

    def delete_point(self, namespace: str, name: str) -> bool:
        return objects.delete_custom(RECOVERY_POINT, namespace, name)

    def annotate_point(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        values: dict[str, str | None] = dict(annotations)
        objects.annotate_custom(RECOVERY_POINT, namespace, name, values)

    def patch_point_status(self, namespace: str, name: str, status: Body) -> None:
        objects.patch_custom_status(RECOVERY_POINT, namespace, name, status)

    def patch_policy_status(self, namespace: str, name: str, status: Body) -> None:
        objects.patch_custom_status(BACKUP_POLICY, namespace, name, status)

    def create_job(self, namespace: str, job: Body) -> tuple[Body, bool]:
        return objects.create_job(namespace, job)

    def get_job(self, namespace: str, name: str) -> Body | None:
        return objects.get_job(namespace, name)

    def delete_job(self, namespace: str, name: str) -> bool:
        return objects.delete_job(namespace, name)

    def post_event(self, involved: Body, event_type: str, reason: str, message: str) -> None:
        involved = {"apiVersion": BACKUP_POLICY.api_version, "kind": "BackupPolicy", **involved}
        objects.post_event(involved, event_type, reason, message)


class S3Store:
    """PolicyStore over boto3; credentials from the location's Secret, through the cluster
    port (so from the watch cache)."""

    def __init__(self, cluster: PolicyCluster, settings: Settings) -> None:
        self._cluster = cluster
        self._settings = settings

    def _client(self, location: S3Location, namespace: str) -> Any:
        credentials = None
        ref = location.credentials_secret_ref
        if ref is not None:
            try:
                data = self._cluster.read_secret(namespace, ref.name)
            except SecretNotFound:
                raise StoreProblem(
                    "S3CredentialsNotFound", f"S3 credentials Secret {ref.name} does not exist"
                ) from None
            try:
                credentials = s3.credentials_from_secret(ref.name, data)
            except s3.StorageError as problem:
                raise StoreProblem(problem.reason, str(problem)) from None
        return s3.client(location, credentials, self._settings.s3_endpoint)

    def head_bucket(self, location: S3Location, namespace: str) -> None:
        try:
            s3.head_bucket(self._client(location, namespace), location.bucket)
        except s3.StorageError as problem:
            raise StoreProblem(problem.reason, str(problem)) from None

    def list_manifest_keys(self, location: S3Location, namespace: str, policy: str) -> list[str]:
        """The manifests catalog sync may import: not those of a point its user deleted while
        the policy retains objects (tombstoned, see docs/agent.md)."""
        try:
            return s3.importable_manifest_keys(
                self._client(location, namespace),
                location.bucket,
                location.prefix,
                namespace,
                policy,
            )
        except s3.StorageError as problem:
            raise StoreProblem(problem.reason, str(problem)) from None

    def read_manifest(self, location: S3Location, namespace: str, key: str) -> Manifest:
        try:
            return s3.read_manifest(self._client(location, namespace), location.bucket, key)
        except s3.StorageError as problem:
            raise StoreProblem(problem.reason, str(problem)) from None


class TcpReach:
    """Reach: does a TCP connection open within `timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def __call__(self, host: str, port: int) -> str | None:
        try:
            with socket.create_connection((host, port), timeout=self.timeout):
                return None
        except OSError as error:
            return str(error.strerror or error)


class PointReconciler:
    """PointRunner: the RecoveryPoint reconciler takes over a run once its Job exists."""

    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime]) -> None:
        self._settings = settings
        self._clock = clock
        self._cluster = ApiCluster()
        self._store = points.BucketStore(self._cluster, settings)

    def start(self, point: Body) -> None:
        points.start(self._cluster, self._store, point, self._settings, self._clock())

    def started(self, point: Body, job: Body) -> None:
        points.mark_running(self._cluster, point, self._clock())
        if job_outcome(job) != "Running":
            meta = point["metadata"]
            points.sync(self._cluster, self._store, meta["namespace"], meta["name"], self._clock())
