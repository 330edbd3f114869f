"""Idempotent reads and writes of the objects the operator touches.

Creates treat 409 AlreadyExists as success and return the existing object: every name the
operator creates is deterministic, so a retried create after a crash is harmless.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from aegis import GROUP, VERSION
from aegis.api import Kind
from aegis.k8s.cache import SecretCache
from aegis.k8s.client import api_client
from aegis.k8s.jobs import Termination, termination_of


class NotFound(LookupError):
    """The object does not exist."""


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client())


def _core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client())


def _batch() -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(api_client())


def _send_json(method: str, path: str, body: Any, content_type: str = "application/json") -> Any:
    """One request with a JSON body and a JSON answer (parsed), without the client's
    model layer: its `sanitize_for_serialization` walks every value of the body in Python,
    which at a busy tick (a thousand Job creates) cost more CPU than the requests
    themselves. Authentication and TLS are the client's own. Errors raise ApiException."""
    client = api_client()
    headers: dict[str, str] = dict(client.default_headers)
    if body is not None:
        headers["Content-Type"] = content_type
    headers["Accept"] = "application/json"
    client.update_params_for_auth(headers, [], ["BearerToken"])
    response = client.request(
        method, client.configuration.host + path, headers=headers, body=body,
        _preload_content=False,
    )
    return json.loads(response.data)


def get_custom(kind: Kind, namespace: str, name: str) -> dict[str, Any]:
    try:
        obj: dict[str, Any] = _custom().get_namespaced_custom_object(
            GROUP, VERSION, namespace, kind.plural, name
        )
    except ApiException as error:
        if error.status == 404:
            raise NotFound(f"{kind.kind} {namespace}/{name} not found") from None
        raise
    return obj


def list_custom(
    kind: Kind, namespace: str, label_selector: str | None = None
) -> list[dict[str, Any]]:
    result = _custom().list_namespaced_custom_object(
        GROUP, VERSION, namespace, kind.plural, label_selector=label_selector or ""
    )
    items: list[dict[str, Any]] = result.get("items", [])
    return items


def create_custom(kind: Kind, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create, or return the existing object of that name. Returns (object, created)."""
    try:
        created: dict[str, Any] = _custom().create_namespaced_custom_object(
            GROUP, VERSION, namespace, kind.plural, body
        )
        return created, True
    except ApiException as error:
        if error.status != 409:
            raise
    return get_custom(kind, namespace, body["metadata"]["name"]), False


def patch_custom_status(
    kind: Kind, namespace: str, name: str, status: dict[str, Any]
) -> str | None:
    """Merge-patch the status subresource. Returns the resourceVersion it produced."""
    path = (
        f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{kind.plural}/{quote(name)}"
        "/status"
    )
    try:
        answer = _send_json("PATCH", path, {"status": status}, "application/merge-patch+json")
    except ApiException as error:
        if error.status == 404:
            raise NotFound(f"{kind.kind} {namespace}/{name} not found") from None
        raise
    return _version_of(answer)


def _version_of(answer: Any) -> str | None:
    meta = answer.get("metadata") if isinstance(answer, dict) else None
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def annotate_custom(
    kind: Kind, namespace: str, name: str, annotations: dict[str, str | None]
) -> str | None:
    """Set annotations (merge patch); a None value removes that annotation. Returns the
    resourceVersion it produced."""
    answer = _custom().patch_namespaced_custom_object(
        GROUP, VERSION, namespace, kind.plural, name, {"metadata": {"annotations": annotations}}
    )
    return _version_of(answer)


def delete_custom(kind: Kind, namespace: str, name: str) -> bool:
    """Delete; False when it was already gone."""
    try:
        _custom().delete_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def create_job(namespace: str, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Job, or return the existing one of that name. Returns (job, created)."""
    batch = _batch()
    try:
        # Raw JSON both ways, not the client's models: at a busy tick, serializing and
        # deserializing a V1Job cost more than the request itself.
        created: dict[str, Any] = _send_json(
            "POST", f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs", job
        )
        return created, True
    except ApiException as error:
        if error.status != 409:
            raise
    response = batch.read_namespaced_job(job["metadata"]["name"], namespace, _preload_content=False)
    existing: dict[str, Any] = json.loads(response.data)
    return existing, False


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job as the API server sends it (JSON, as a watch event has it). Not through the
    client's model layer: building a V1Job (every timestamp through dateutil) and turning it
    back into a dict was, with the point status writes, most of the scheduler's CPU at 5,000
    policies (py-spy, bench/scheduler.py)."""
    path = f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}"
    try:
        job: dict[str, Any] = _send_json("GET", path, None)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return job


def delete_job(namespace: str, name: str) -> bool:
    """Delete a Job and its pods (foreground would block; background is what kubectl does)."""
    try:
        _batch().delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def job_failure_message(namespace: str, job_name: str) -> str | None:
    """The agent's one-line reason: the termination message of the Job's newest failed pod
    (the agent writes it to /dev/termination-log)."""
    return _termination_message(namespace, job_name, failed_only=True)


def job_result_message(namespace: str, job_name: str) -> str | None:
    """The termination message of the Job's newest pod, whatever its exit code: the agent's
    final one-line JSON result (of a success as well as of a failure)."""
    return _termination_message(namespace, job_name, failed_only=False)


def _termination_message(namespace: str, job_name: str, *, failed_only: bool) -> str | None:
    found = job_termination(namespace, job_name, failed_only=failed_only)
    return found.message if found else None


def job_termination(
    namespace: str, job_name: str, *, failed_only: bool = False
) -> Termination | None:
    """The terminated state (message, reason, exit code) of the Job's newest ended pod."""
    try:
        pods = _core().list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
    except ApiException:
        return None
    raw = api_client().sanitize_for_serialization(pods.items)
    return termination_of(list(raw), failed_only=failed_only)


def read_secret(
    namespace: str, name: str, cache: SecretCache | None = None
) -> dict[str, bytes]:
    """A Secret's data, decoded. Values are secrets: never log or report them.

    With `cache` (the operator's watch-fed SecretCache), a Secret it holds costs no API call,
    and one read from the API server is kept there for the next read (see SecretCache.fill)."""
    if cache is not None:
        found = cache.get(namespace, name)
        if found is not None:
            return found
    try:
        secret = _core().read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise NotFound(f"Secret {namespace}/{name} not found") from None
        raise
    data: dict[str, str] = dict(secret.data or {})
    if cache is not None:
        cache.fill(namespace, name, str(secret.metadata.resource_version or ""), data)
    return {key: base64.b64decode(value) for key, value in data.items()}


def post_event(
    involved: dict[str, Any],
    event_type: str,
    reason: str,
    message: str,
    *,
    component: str = "aegis",
    key: str | None = None,
) -> bool:
    """Post a core/v1 Event from outside a kopf handler (kopf.event needs its context).

    With `key`, the event gets a deterministic name (`<object>.<uid>.<key>`): posting it again
    (after an operator restart) is a no-op, so an event that must be told once is told once.
    Returns False when it already existed or could not be posted."""
    meta = involved["metadata"]
    now = dt.datetime.now(dt.UTC)
    name_meta: dict[str, str] = (
        {"name": event_name(meta["name"], meta.get("uid"), key)}
        if key
        else {"generateName": f"{meta['name']}."}
    )
    event = {
        "metadata": {**name_meta, "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now.isoformat().replace("+00:00", "Z"),
        "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
        "count": 1,
    }
    try:
        _send_json("POST", f"/api/v1/namespaces/{quote(meta['namespace'])}/events", event)
    except ApiException:
        # Events are best effort, as in every controller: never fail reconciliation on them.
        # A keyed event that exists (409) was told before.
        return False
    return True


def event_name(name: str, uid: str | None, key: str) -> str:
    """A DNS-subdomain event name unique to the object (by uid) and the occasion."""
    return f"{name}.{(uid or '')[:8]}.{key.lower()}".replace("..", ".")[:253]
