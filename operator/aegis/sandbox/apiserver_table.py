"""Server-side printing: the `meta.k8s.io/v1` Table kubectl asks for on `kubectl get`.

For custom resources the columns come from the CRD's additionalPrinterColumns, evaluated with
the JSONPath subset CRDs use in practice (`.a.b`, `[0]`, `[*]`, `[?(@.type=="Ready")]`).
"""

from __future__ import annotations

import datetime
import re
from functools import lru_cache
from typing import Any

from aegis.sandbox.apiserver_resources import ResourceInfo

JsonDict = dict[str, Any]

NAME_COLUMN: JsonDict = {
    "name": "Name", "type": "string", "format": "name", "priority": 0,
    "description": "Name must be unique within a namespace. Is required when creating "
                   "resources, although some resources may allow a client to request the "
                   "generation of an appropriate name automatically.",
}
AGE_COLUMN: JsonDict = {
    "name": "Age", "type": "string", "format": "", "priority": 0,
    "description": "CreationTimestamp is a timestamp representing the server time when this "
                   "object was created.",
}

_STEP = re.compile(
    r"""\.(?P<key>[A-Za-z0-9_\-$]+)"""
    r"""|\[['"](?P<qkey>[^'"]+)['"]\]"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[(?P<star>\*)\]"""
    r"""|\[\?\(@(?P<fpath>(?:\.[A-Za-z0-9_\-]+)+)\s*(?P<fop>==|!=)\s*"""
    r"""(?:"(?P<fdq>[^"]*)"|'(?P<fsq>[^']*)'|(?P<fnum>[^)\s]+))\s*\)\]"""
)


class JsonPathError(ValueError):
    pass


@lru_cache(maxsize=256)
def compile_jsonpath(path: str) -> tuple[tuple[str, Any], ...]:
    """Compile `.a.b[?(@.type=="Ready")].status` to steps; `{...}` wrappers are accepted."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    text = text.removeprefix("$")
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise JsonPathError(f"unsupported JSONPath {path!r} at {text[pos:]!r}")
        if match.group("key") is not None or match.group("qkey") is not None:
            steps.append(("key", match.group("key") or match.group("qkey")))
        elif match.group("index") is not None:
            steps.append(("index", int(match.group("index"))))
        elif match.group("star") is not None:
            steps.append(("star", None))
        else:
            literal = next(g for g in (match.group("fdq"), match.group("fsq"), match.group("fnum"))
                           if g is not None)
            fpath = tuple(match.group("fpath").strip(".").split("."))
            steps.append(("filter", (fpath, match.group("fop"), literal)))
        pos = match.end()
    return tuple(steps)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def evaluate_jsonpath(path: str, obj: Any) -> list[Any]:
    current = [obj]
    for kind, arg in compile_jsonpath(path):
        following: list[Any] = []
        for value in current:
            keyed = kind == "key" and isinstance(value, dict) and arg in value
            indexed = (kind == "index" and isinstance(value, list)
                       and -len(value) <= arg < len(value))
            if keyed or indexed:
                following.append(value[arg])
            elif kind == "star" and isinstance(value, list):
                following.extend(value)
            elif kind == "star" and isinstance(value, dict):
                following.extend(value.values())
            elif kind == "filter" and isinstance(value, list):
                fpath, op, literal = arg
                for item in value:
                    found: Any = item
                    for key in fpath:
                        found = found.get(key) if isinstance(found, dict) else None
                    equal = found is not None and _scalar_text(found) == literal
                    if equal == (op == "=="):
                        following.append(item)
        current = following
    return current


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def parse_timestamp(value: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def age(value: Any, now: datetime.datetime) -> str:
    if not isinstance(value, str):
        return "<unknown>"
    stamp = parse_timestamp(value)
    if stamp is None:
        return "<invalid>"
    return human_duration((now - stamp).total_seconds())


def _cell(column_type: str, value: Any, now: datetime.datetime) -> Any:
    """tableconvertor.cellForJSONValue: a value of the wrong type prints as empty."""
    if value is None:
        return None
    if column_type == "integer":
        if isinstance(value, bool):
            return None
        return int(value) if isinstance(value, int | float) else None
    if column_type == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "string":
        return value if isinstance(value, str) else None
    if column_type == "date":
        return age(value, now) if isinstance(value, str) else None
    return None


def _custom_cells(info: ResourceInfo, obj: JsonDict, now: datetime.datetime) -> list[Any]:
    cells: list[Any] = []
    for column in info.printer_columns:
        try:
            results = evaluate_jsonpath(str(column.get("jsonPath", "")), obj)
        except JsonPathError:
            results = []
        column_type = str(column.get("type", "string"))
        if not results:
            cells.append(None)
        elif len(results) == 1:
            cells.append(_cell(column_type, results[0], now))
        else:
            cells.append(",".join(_scalar_text(r) for r in results))
    return cells


def _column_definitions(info: ResourceInfo) -> list[JsonDict]:
    if info.custom and info.printer_columns:
        columns = [dict(NAME_COLUMN)]
        for column in info.printer_columns:
            columns.append({
                "name": column.get("name", ""),
                "type": column.get("type", "string"),
                "format": column.get("format", ""),
                "description": column.get("description")
                or f"Custom resource definition column (in JSONPath format): "
                   f"{column.get('jsonPath', '')}",
                "priority": int(column.get("priority", 0)),
            })
        return columns
    if info.storage_key == ("", "events"):
        return [
            {"name": "Last Seen", "type": "string", "format": "", "priority": 0,
             "description": "Time when the event was last observed"},
            {"name": "Type", "type": "string", "format": "", "priority": 0,
             "description": "Type of this event"},
            {"name": "Reason", "type": "string", "format": "", "priority": 0,
             "description": "Why the action was taken"},
            {"name": "Object", "type": "string", "format": "", "priority": 0,
             "description": "The object this event is about"},
            {"name": "Message", "type": "string", "format": "", "priority": 0,
             "description": "A human-readable description of the status"},
        ]
    if info.storage_key == ("", "namespaces"):
        return [dict(NAME_COLUMN),
                {"name": "Status", "type": "string", "format": "", "priority": 0,
                 "description": "The status of the namespace"},
                dict(AGE_COLUMN)]
    return [dict(NAME_COLUMN), dict(AGE_COLUMN)]


def _cells(info: ResourceInfo, obj: JsonDict, now: datetime.datetime) -> list[Any]:
    meta = obj.get("metadata") or {}
    if info.custom and info.printer_columns:
        return [meta.get("name", ""), *_custom_cells(info, obj, now)]
    if info.storage_key == ("", "events"):
        v1 = info.is_events_v1  # the same events, seen with events.k8s.io/v1 field names
        involved = obj.get("regarding" if v1 else "involvedObject") or {}
        last = (obj.get("deprecatedLastTimestamp" if v1 else "lastTimestamp")
                or obj.get("eventTime") or meta.get("creationTimestamp"))
        return [age(last, now), obj.get("type", ""), obj.get("reason", ""),
                f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
                obj.get("note" if v1 else "message", "")]
    if info.storage_key == ("", "namespaces"):
        return [meta.get("name", ""), (obj.get("status") or {}).get("phase", ""),
                age(meta.get("creationTimestamp"), now)]
    return [meta.get("name", ""), age(meta.get("creationTimestamp"), now)]


def partial_metadata(obj: JsonDict) -> JsonDict:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {}}


def build_table(
    info: ResourceInfo,
    objects: list[JsonDict],
    resource_version: str,
    include_object: str,
    *,
    single: bool = False,
) -> JsonDict:
    now = datetime.datetime.now(tz=datetime.UTC)
    rows = []
    for obj in objects:
        row: JsonDict = {"cells": _cells(info, obj, now)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj)
        rows.append(row)
    metadata: JsonDict = {} if single else {"resourceVersion": resource_version}
    if single and objects:
        metadata = {"resourceVersion": (objects[0].get("metadata") or {})
                    .get("resourceVersion", resource_version)}
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "columnDefinitions": _column_definitions(info), "rows": rows}
