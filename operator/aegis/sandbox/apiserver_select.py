"""Label and field selectors, parsed and matched as kube-apiserver does."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JsonDict = dict[str, Any]


class SelectorError(ValueError):
    """A selector the real server would refuse with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"


_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:\s(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in (part.strip() for part in parts) if p]


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    if not text:
        return ()
    requirements = []
    for part in _split_top_level(text):
        eq = _EQ_RE.match(part)
        if eq:
            op = "!=" if eq.group(2) == "!=" else "="
            requirements.append(Requirement(eq.group(1), op, (eq.group(3),)))
            continue
        match = _SET_RE.match(part)
        if match is None:
            raise SelectorError(f"unable to parse requirement: {part!r}")
        negated, key, set_op, values = match.groups()
        if set_op:
            if negated:
                raise SelectorError(f"unable to parse requirement: {part!r}")
            items = tuple(v.strip() for v in values.split(",") if v.strip())
            requirements.append(Requirement(key, set_op, items))
        else:
            requirements.append(Requirement(key, "!exists" if negated else "exists"))
    return tuple(requirements)


def labels_match(requirements: tuple[Requirement, ...], obj: JsonDict) -> bool:
    if not requirements:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


# ---------------------------------------------------------------------------- fields

FieldGetter = Callable[[JsonDict], str]


def _path_getter(path: str) -> FieldGetter:
    keys = path.split(".")

    def get(obj: JsonDict) -> str:
        value: Any = obj
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return get


COMMON_FIELDS = ("metadata.name", "metadata.namespace")
# Extra field labels the real server supports per kind (the ones our clients use).
KIND_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "events"): (
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
        "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
    ),
    ("events.k8s.io", "events"): (
        "regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
        "regarding.apiVersion", "regarding.resourceVersion", "regarding.fieldPath", "reason",
        "reportingController", "type",
    ),
    ("", "pods"): ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                   "spec.serviceAccountName", "status.phase", "status.podIP"),
    ("", "secrets"): ("type",),
    ("", "namespaces"): ("status.phase",),
    ("batch", "jobs"): ("status.successful",),
}
_FIELD_ALIASES = {"source": "source.component"}
# events.k8s.io/v1 Events are stored as core Events: their field labels read the core fields.
_EVENTS_V1_ALIASES = {"reportingController": "reportingComponent",
                      **{f"regarding.{k}": f"involvedObject.{k}" for k in (
                          "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion",
                          "fieldPath")}}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negated: bool
    value: str
    getter: FieldGetter

    def matches(self, obj: JsonDict) -> bool:
        return (self.getter(obj) == self.value) != self.negated


def parse_field_selector(
    text: str | None, storage_key: tuple[str, str]
) -> tuple[FieldRequirement, ...]:
    if not text:
        return ()
    allowed = COMMON_FIELDS + KIND_FIELDS.get(storage_key, ())
    requirements = []
    for part in _split_top_level(text):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if match is None:
            raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
        field, op, value = match.groups()
        if field not in allowed:
            raise SelectorError(f'field label not supported: {field}')
        aliases = _EVENTS_V1_ALIASES if storage_key == ("events.k8s.io", "events") else (
            _FIELD_ALIASES)
        getter = _path_getter(aliases.get(field, field))
        requirements.append(FieldRequirement(field, op == "!=", value, getter))
    return tuple(requirements)


def fields_match(requirements: tuple[FieldRequirement, ...], obj: JsonDict) -> bool:
    return all(req.matches(obj) for req in requirements)


@dataclass(frozen=True)
class Selector:
    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: JsonDict) -> bool:
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)

    def exact_name(self) -> str | None:
        """A `metadata.name=x` requirement lets listing skip the scan."""
        for req in self.fields:
            if req.field == "metadata.name" and not req.negated:
                return req.value
        return None
