"""Structural-schema handling of custom resources, as kube-apiserver does it on every write.

Order, as in the real server: prune unknown fields, apply defaults, then validate. Errors are
`FieldCause`s with the real server's reasons (FieldValueRequired, FieldValueTypeInvalid, ...)
and field paths (`spec.copies[0].bucket`). CEL rules (`x-kubernetes-validations`) are handed
to `aegis.sandbox.apiserver_cel`, which evaluates the small subset it understands.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aegis.sandbox.apiserver_errors import FieldCause

JsonDict = dict[str, Any]
Schema = dict[str, Any]

# The fields of ObjectMeta: everything else under `metadata` is dropped, as the real server does
# when it decodes into the ObjectMeta struct.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
})

DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_JSON_INTEGER_FLOAT = float(2**53)

CelHook = Callable[[Any, Any, Schema, str], list[FieldCause]]


def go_repr(value: Any) -> str:
    """How the real server quotes a value inside an error message."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        # The real server decodes JSON integers into int64; a wider one becomes a float64,
        # so `type: integer` refuses it even where the schema sets no maximum.
        return "integer" if INT64_MIN <= value <= INT64_MAX else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(schema: Schema, value: Any) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    expected = schema.get("type")
    if expected is None:
        return True
    actual = _type_name(value)
    if expected == "integer" and isinstance(value, float):
        # kube-openapi accepts a float with no fraction up to 2^53 as an integer (`3.0`).
        return value.is_integer() and abs(value) <= MAX_JSON_INTEGER_FLOAT
    return actual == expected or (expected == "number" and actual == "integer")


# ---------------------------------------------------------------------------- prune + default


def prune_and_default(value: Any, schema: Schema | None) -> Any:
    """Drop fields the schema does not know and fill in defaults; returns a new value."""
    if schema is None:
        return value
    return _prune_default(value, schema, "", None)


def _prune_default(value: Any, schema: Schema, path: str, dropped: list[str] | None) -> Any:
    if isinstance(value, dict):
        props: dict[str, Schema] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        result: JsonDict = {}
        for key, item in value.items():
            if key in props:
                sub = props[key]
                if item is None and not sub.get("nullable") and "default" in sub:
                    continue  # nulls are pruned before defaulting, then defaulted
                result[key] = _prune_default(item, sub, _join(path, key), dropped)
            elif isinstance(additional, dict):
                result[key] = _prune_default(item, additional, _join(path, key), dropped)
            elif preserve or additional is True:
                result[key] = item
            elif dropped is not None:
                dropped.append(_join(path, key))
        for key, sub in props.items():
            if key not in result and "default" in sub:
                result[key] = _prune_default(copy.deepcopy(sub["default"]), sub, "", None)
        return result
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [_prune_default(item, items, f"{path}[{index}]", dropped)
                    for index, item in enumerate(value)]
    return value


def prune_custom_object(obj: JsonDict, schema: Schema | None,
                        dropped: list[str] | None = None) -> JsonDict:
    """Prune/default a whole custom object; apiVersion, kind and metadata are always kept.
    The paths of pruned fields (`spec.x`, `metadata.y`) are appended to `dropped`."""
    raw_meta = obj.get("metadata") or {}
    meta = {k: v for k, v in raw_meta.items() if k in OBJECT_META_FIELDS}
    if dropped is not None:
        dropped.extend(f"metadata.{k}" for k in raw_meta if k not in OBJECT_META_FIELDS)
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    if schema is not None:
        body_schema = dict(schema)
        props = {k: v for k, v in (schema.get("properties") or {}).items()
                 if k not in ("apiVersion", "kind", "metadata")}
        body_schema["properties"] = props
        body = _prune_default(body, body_schema, "", dropped)
    result: JsonDict = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                        "metadata": meta}
    result.update(body)
    return result


# ---------------------------------------------------------------------------- validation


def validate(
    value: Any, schema: Schema, path: str = "", *, old: Any = None, cel: CelHook | None = None
) -> list[FieldCause]:
    """All schema violations of `value`, in the real server's error vocabulary."""
    causes: list[FieldCause] = []
    _validate(value, schema, path, causes, old, cel)
    return causes


def _invalid(path: str, value: Any, detail: str) -> FieldCause:
    return FieldCause(path, "FieldValueInvalid", f"Invalid value: {go_repr(value)}: {detail}")


def _validate(
    value: Any, schema: Schema, path: str, out: list[FieldCause], old: Any, cel: CelHook | None
) -> None:
    where = path or "body"
    if value is None:
        if schema.get("nullable"):
            return
        if schema.get("type") or schema.get("x-kubernetes-int-or-string"):
            expected = schema.get("type", "integer-or-string")
            out.append(FieldCause(path, "FieldValueTypeInvalid",
                                  f'Invalid value: "null": {where} in body must be of type '
                                  f'{expected}: "null"'))
        return
    if not _type_ok(schema, value):
        actual = _type_name(value)
        out.append(FieldCause(path, "FieldValueTypeInvalid",
                              f'Invalid value: "{actual}": {where} in body must be of type '
                              f'{schema.get("type")}: "{actual}"'))
        return
    _validate_scalar(value, schema, path, out)
    if isinstance(value, dict):
        _validate_object(value, schema, path, out, old, cel)
    elif isinstance(value, list):
        _validate_array(value, schema, path, out, old, cel)
    for key in ("allOf", "anyOf", "oneOf", "not"):
        if key in schema:
            _validate_combinator(key, value, schema[key], path, out)
    if cel is not None and schema.get("x-kubernetes-validations"):
        out.extend(cel(value, old, schema, path))


def _validate_scalar(value: Any, schema: Schema, path: str, out: list[FieldCause]) -> None:
    where = path or "body"
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(go_repr(v) for v in schema["enum"])
        out.append(FieldCause(path, "FieldValueNotSupported",
                              f"Unsupported value: {go_repr(value)}: supported values: "
                              f"{supported}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, path, out)
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(FieldCause(path, "FieldValueTooLong",
                                  f"Too long: may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append(_invalid(path, value, f"{where} in body should be at least "
                                             f"{schema['minLength']} chars long"))
        pattern = schema.get("pattern")
        if pattern and _compiled(pattern).search(value) is None:
            out.append(_invalid(path, value, f"{where} in body should match '{pattern}'"))
        fmt = schema.get("format")
        if fmt and not _format_ok(fmt, value):
            out.append(_invalid(path, value, f"{where} in body must be of type {fmt}: "
                                             f"{go_repr(value)}"))


def _validate_number(value: float, schema: Schema, path: str, out: list[FieldCause]) -> None:
    where = path or "body"
    maximum, minimum = schema.get("maximum"), schema.get("minimum")
    if maximum is not None:
        if schema.get("exclusiveMaximum") and value >= maximum:
            out.append(_invalid(path, value, f"{where} in body should be less than {maximum}"))
        elif value > maximum:
            out.append(_invalid(path, value, f"{where} in body should be less than or equal "
                                             f"to {maximum}"))
    if minimum is not None:
        if schema.get("exclusiveMinimum") and value <= minimum:
            out.append(_invalid(path, value, f"{where} in body should be greater than {minimum}"))
        elif value < minimum:
            out.append(_invalid(path, value, f"{where} in body should be greater than or equal "
                                             f"to {minimum}"))
    multiple = schema.get("multipleOf")
    if multiple and (value / multiple) != int(value / multiple):
        out.append(_invalid(path, value, f"{where} in body should be a multiple of {multiple}"))


def _validate_object(
    value: JsonDict, schema: Schema, path: str, out: list[FieldCause], old: Any,
    cel: CelHook | None,
) -> None:
    where = path or "body"
    for key in schema.get("required") or []:
        if key not in value:
            out.append(FieldCause(_join(path, key), "FieldValueRequired", "Required value"))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        out.append(FieldCause(path, "FieldValueTooMany",
                              f"Too many: {len(value)}: must have at most "
                              f"{schema['maxProperties']} items"))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        out.append(_invalid(path, value, f"{where} in body should have at least "
                                         f"{schema['minProperties']} properties"))
    props: dict[str, Schema] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    old_map = old if isinstance(old, dict) else {}
    for key, item in value.items():
        sub = props.get(key)
        if sub is None and isinstance(additional, dict):
            sub = additional
        if sub is not None:
            _validate(item, sub, _join(path, key), out, old_map.get(key), cel)


def _validate_array(
    value: list[Any], schema: Schema, path: str, out: list[FieldCause], old: Any,
    cel: CelHook | None,
) -> None:
    where = path or "body"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append(FieldCause(path, "FieldValueTooMany",
                              f"Too many: {len(value)}: must have at most {schema['maxItems']} "
                              "items"))
    if "minItems" in schema and len(value) < schema["minItems"]:
        out.append(_invalid(path, value, f"{where} in body should have at least "
                                         f"{schema['minItems']} items"))
    list_type = schema.get("x-kubernetes-list-type")
    if list_type in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: list[Any] = []
        for index, item in enumerate(value):
            identity = ({k: item.get(k) for k in keys} if list_type == "map"
                        and isinstance(item, dict) else item)
            if identity in seen:
                out.append(FieldCause(f"{path}[{index}]", "FieldValueDuplicate",
                                      f"Duplicate value: {go_repr(identity)}"))
            seen.append(identity)
    items = schema.get("items")
    if isinstance(items, dict):
        # Transition rules compare list items by position only when both lists are equally long.
        old_list = old if isinstance(old, list) and len(old) == len(value) else None
        for index, item in enumerate(value):
            _validate(item, items, f"{path}[{index}]", out,
                      old_list[index] if old_list is not None else None, cel)


def _validate_combinator(
    key: str, value: Any, operand: Any, path: str, out: list[FieldCause]
) -> None:
    where = path or "body"
    if key == "not":
        if not validate(value, operand, path):
            out.append(FieldCause(path, "FieldValueInvalid",
                                  f"Invalid value: {go_repr(value)}: {where} in body must not "
                                  "validate the schema (not)"))
        return
    passing = sum(1 for sub in operand if not validate(value, sub, path))
    if key == "allOf":
        for sub in operand:
            out.extend(validate(value, sub, path))
    elif key == "anyOf" and passing == 0:
        out.append(FieldCause(path, "FieldValueInvalid",
                              f"Invalid value: {go_repr(value)}: {where} in body must validate "
                              "at least one schema (anyOf)"))
    elif key == "oneOf" and passing != 1:
        # kube-apiserver's own wording, field-less path included (issue 10, point 5).
        found = "Found none valid" if passing == 0 else f"Found {passing} valid alternatives"
        out.append(FieldCause("<nil>", "FieldValueInvalid",
                              f'Invalid value: "": "{where}" must validate one and only one '
                              f"schema (oneOf). {found}"))


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _format_ok(fmt: str, value: str) -> bool:
    if fmt == "date-time":
        try:
            datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
        return "T" in value or "t" in value
    if fmt == "date":
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            return False
        return True
    return True  # int32, int64, byte, uri, ... are not checked by the real server either


# ---------------------------------------------------------------------------- metadata


def validate_metadata(meta: JsonDict, *, namespaced: bool, is_namespace: bool,
                      path_segment_name: bool = False) -> list[FieldCause]:
    """ObjectMeta checks every kind gets: name shape, label syntax, annotation keys.
    `path_segment_name`: RBAC kinds, whose names only need to be a URL path segment
    (`system:discovery` is a valid ClusterRole name)."""
    causes: list[FieldCause] = []
    name = meta.get("name")
    if not name:
        causes.append(FieldCause("metadata.name", "FieldValueRequired",
                                 "Required value: name or generateName is required"))
    elif path_segment_name:
        causes.extend(_check_path_segment_name(str(name)))
    else:
        causes.extend(_check_name(str(name), is_namespace))
    for key, val in (meta.get("labels") or {}).items():
        causes.extend(_check_label(str(key), val))
    for key in (meta.get("annotations") or {}):
        causes.extend(_check_qualified_key("metadata.annotations", str(key)))
    return causes


def _check_path_segment_name(name: str) -> list[FieldCause]:
    if name in (".", ".."):
        return [FieldCause("metadata.name", "FieldValueInvalid",
                           f"Invalid value: {go_repr(name)}: may not be '{name}'")]
    for bad in ("/", "%"):
        if bad in name:
            return [FieldCause("metadata.name", "FieldValueInvalid",
                               f"Invalid value: {go_repr(name)}: may not contain '{bad}'")]
    return []


def _check_name(name: str, is_namespace: bool) -> list[FieldCause]:
    if is_namespace:
        if len(name) > 63 or not DNS1123_LABEL.fullmatch(name):
            return [FieldCause("metadata.name", "FieldValueInvalid",
                               f"Invalid value: {go_repr(name)}: a lowercase RFC 1123 label must "
                               "consist of lower case alphanumeric characters or '-', and must "
                               "start and end with an alphanumeric character (e.g. 'my-name',  "
                               "or '123-abc', regex used for validation is "
                               f"'{DNS1123_LABEL.pattern}')")]
        return []
    if len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        return [FieldCause("metadata.name", "FieldValueInvalid",
                           f"Invalid value: {go_repr(name)}: a lowercase RFC 1123 subdomain must "
                           "consist of lower case alphanumeric characters, '-' or '.', and must "
                           "start and end with an alphanumeric character (e.g. 'example.com', "
                           f"regex used for validation is '{DNS1123_SUBDOMAIN.pattern}')")]
    return []


def _check_qualified_key(field: str, key: str) -> list[FieldCause]:
    prefix, _, name = key.rpartition("/")
    ok = bool(name) and len(name) <= 63 and QUALIFIED_NAME.fullmatch(name) is not None
    if prefix:
        ok = ok and len(prefix) <= 253 and DNS1123_SUBDOMAIN.fullmatch(prefix) is not None
    if ok:
        return []
    return [FieldCause(field, "FieldValueInvalid",
                       f"Invalid value: {go_repr(key)}: name part must consist of alphanumeric "
                       "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                       "character")]


def _check_label(key: str, value: Any) -> list[FieldCause]:
    causes = _check_qualified_key("metadata.labels", key)
    if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
        causes.append(FieldCause("metadata.labels", "FieldValueInvalid",
                                 f"Invalid value: {go_repr(value)}: a valid label must be an "
                                 "empty string or consist of alphanumeric characters, '-', '_' or "
                                 "'.', and must start and end with an alphanumeric character"))
    return causes
