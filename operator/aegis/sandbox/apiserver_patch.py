"""The three PATCH flavours kube-apiserver accepts: JSON merge, strategic merge and JSON patch.

Strategic merge is implemented for the list fields Kubernetes declares with a merge key
(containers by name, env by name, ports by containerPort, conditions by type, ...) plus the
directives kubectl sends (`$patch`, `$setElementOrder/...`, `$deleteFromPrimitiveList/...`,
`$retainKeys`); every other list is replaced, as the real server does for lists without a
patch strategy.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

JsonDict = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field name -> merge key of the lists Kubernetes merges element-wise (patchStrategy=merge).
STRATEGIC_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
# Primitive lists that strategic merge unions instead of replacing.
STRATEGIC_MERGE_PRIMITIVE_LISTS = frozenset({"finalizers"})


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422)."""


class PatchFormatError(ValueError):
    """A patch body that cannot be parsed at all (the server answers 400)."""


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    deletions: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            deletions[key.split("/", 1)[1]] = list(value or [])
            continue
        if key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys, $patch: ordering hints only
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in STRATEGIC_MERGE_KEYS:
            result[key] = _merge_keyed_list(result.get(key), value, STRATEGIC_MERGE_KEYS[key])
        elif isinstance(value, list) and key in STRATEGIC_MERGE_PRIMITIVE_LISTS:
            current = list(result.get(key) or [])
            result[key] = current + [v for v in value if v not in current]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    for key, removed in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in removed]
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_keyed_list(current: Any, patch: list[Any], merge_key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in (current if isinstance(current, list) else [])]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            merged.append(copy.deepcopy(item))
            continue
        index = next((i for i, existing in enumerate(merged)
                      if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]),
                     None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def json_patch(target: JsonDict, operations: Any) -> JsonDict:
    """RFC 6902, including `test` (which kopf uses as an optimistic lock on resourceVersion)."""
    if not isinstance(operations, list):
        raise PatchFormatError("json patch must be a list of operations")
    try:
        patch = jsonpatch.JsonPatch(operations)
    except (jsonpatch.InvalidJsonPatch, TypeError) as exc:
        raise PatchFormatError(str(exc)) from exc
    try:
        result = patch.apply(target, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(f"the server rejected our request due to an error in our request: "
                         f"testing value failed: {exc}") from exc
    except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchException,
            jsonpointer.JsonPointerException, KeyError, IndexError, TypeError) as exc:
        raise PatchError(f"the server rejected our request due to an error in our request: "
                         f"{exc}") from exc
    if not isinstance(result, dict):
        raise PatchError("the patched object is not a JSON object")
    return result


def apply_patch(target: JsonDict, content_type: str, patch: Any) -> JsonDict:
    if content_type == JSON_PATCH:
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise PatchFormatError("merge patch must be a JSON object")
    if content_type == STRATEGIC_MERGE_PATCH:
        result = strategic_merge_patch(target, patch)
    else:
        result = json_merge_patch(target, patch)
    if not isinstance(result, dict):
        raise PatchError("the patched object is not a JSON object")
    return result
