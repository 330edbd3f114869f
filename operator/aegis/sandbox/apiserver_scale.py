"""The `/scale` subresource of Deployments, StatefulSets and ReplicaSets (autoscaling/v1 Scale).

What `kubectl scale` and Aegis's FailoverPlan scale steps call: a GET answers a Scale built
from the workload (`spec.replicas`, `status.replicas`, the selector as a string); a PATCH or
PUT of the Scale changes only the workload's `spec.replicas`. RBAC sees it as the
`deployments/scale` subresource, so a Role may allow scaling without allowing edits of the
rest of the spec, as on a real cluster.
"""

from __future__ import annotations

from typing import Any

from aegis.sandbox import apiserver_errors as errors
from aegis.sandbox.apiserver_errors import ApiError, FieldCause
from aegis.sandbox.apiserver_options import WriteOptions
from aegis.sandbox.apiserver_patch import MERGE_PATCH, PatchError, PatchFormatError, apply_patch
from aegis.sandbox.apiserver_resources import ResourceInfo

JsonDict = dict[str, Any]


def scale_of(obj: JsonDict) -> JsonDict:
    meta = obj.get("metadata") or {}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    labels = ((spec.get("selector") or {}).get("matchLabels") or {})
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                          "creationTimestamp") if k in meta},
        "spec": {"replicas": int(spec.get("replicas", 1))},
        "status": {"replicas": int(status.get("replicas") or 0),
                   "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))},
    }


def serve_scale(store: Any, info: ResourceInfo, method: str, namespace: str | None, name: str,
                content_type: str, data: Any, options: WriteOptions | None = None) -> JsonDict:
    """GET, PATCH or PUT a Scale; with `dryRun=All` in `options` the change is validated and
    answered but not stored, as kube-apiserver does."""
    current = store.get(info, namespace, name)
    scale = scale_of(current)
    if method == "GET":
        return scale
    if method == "PATCH":
        try:
            wanted = apply_patch(scale, content_type, data)
        except PatchFormatError as exc:
            raise errors.bad_request(str(exc)) from exc
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from exc
    elif method == "PUT":
        if not isinstance(data, dict):
            raise errors.bad_request("the body of the request must be a Scale")
        wanted = data
    else:
        raise errors.method_not_allowed(
            f"the server does not allow this method on the requested resource ({method})")
    replicas = (wanted.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        scale_info = ResourceInfo("autoscaling", "v1", "scales", "scale", "Scale", True)
        raise errors.invalid(scale_info, name, [FieldCause(
            "spec.replicas", "FieldValueInvalid",
            f"Invalid value: {replicas!r}: must be greater than or equal to 0")])
    updated = store.patch(info, namespace, name, MERGE_PATCH,
                          {"spec": {"replicas": replicas}}, None, options)
    return scale_of(updated)
