"""Write options of the Kubernetes API emulator: `fieldValidation`, `dryRun`, `fieldManager`,
`force`, as kube-apiserver reads and validates them (CreateOptions, UpdateOptions,
PatchOptions, DeleteOptions), and the unknown/duplicate-field handling they steer.

`fieldValidation` absent means `Warn` on the server (kubectl sends `Strict`; the Python client
and kopf send nothing): unknown and duplicate fields are dropped (the last duplicate wins) and
each gets a `Warning: 299 - "unknown field \\"spec.x\\""` response header. `Strict` refuses the
request with 400 `... strict decoding error: unknown field "spec.x", unknown field "spec.y"`;
`Ignore` drops them silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aegis.sandbox import apiserver_errors as errors
from aegis.sandbox.apiserver_errors import ApiError, FieldCause
from aegis.sandbox.apiserver_schema import go_repr

JsonDict = dict[str, Any]

IGNORE, WARN, STRICT = "Ignore", "Warn", "Strict"
FIELD_VALIDATION_VALUES = ("", IGNORE, STRICT, WARN)  # sorted, as the real message lists them
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER_MAX = 128


@dataclass
class WriteOptions:
    """What one write request asked for, and the warnings it earned on the way."""

    field_validation: str = WARN
    dry_run: bool = False
    field_manager: str = ""
    force: bool = False
    applied: bool = False  # a server-side apply: managedFields are computed by the apply
    warnings: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    # Where each path of the request body was met, for the real server's ordering of
    # problems in a typed create/update (document order); else duplicates, then sorted.
    order: dict[str, int] = field(default_factory=dict)
    document_order: bool = False
    on_drop: Callable[[str], None] | None = None  # told of every field dropped (Warn/Ignore)

    def check_fields(self, kind: str, version: str, unknown: list[str]) -> None:
        """Refuse (Strict), warn (Warn) or accept (Ignore) unknown and duplicate fields."""
        if self.document_order:
            found = [(self.order.get(p, len(self.order)), f'unknown field "{p}"')
                     for p in unknown]
            found += [(self.order.get(f"dup:{p}", len(self.order)), f'duplicate field "{p}"')
                      for p in self.duplicates]
            problems = [text for _, text in sorted(found)]
        else:
            problems = [f'duplicate field "{p}"' for p in self.duplicates]
            problems += [f'unknown field "{p}"' for p in sorted(unknown)]
        if not problems:
            return
        if self.field_validation == STRICT:
            raise errors.bad_request(f'{kind} in version "{version}" cannot be handled as a '
                                     f"{kind}: strict decoding error: {', '.join(problems)}")
        if self.on_drop is not None:
            for problem in problems:
                self.on_drop(problem)
        if self.field_validation == WARN:
            self.warnings.extend(p for p in problems if p not in self.warnings)
        self.duplicates = []  # reported once, whatever decides next

    def warning_headers(self) -> list[str]:
        """`Warning` header values (RFC 7234 form the real server uses: code 299, agent -)."""
        return [f"299 - {json.dumps(w)}" for w in self.warnings]


def _options_invalid(kind: str, causes: list[FieldCause]) -> ApiError:
    rendered = [c.render() for c in causes]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    return ApiError(422, "Invalid", f'{kind}.meta.k8s.io "" is invalid: {summary}',
                    {"group": "meta.k8s.io", "kind": kind,
                     "causes": [c.to_api() for c in causes]})


def parse_write_options(method: str, params: Mapping[str, str], body: Any, raw_body: bytes,
                        content_type: str, user_agent: str = "") -> WriteOptions:
    """The options of a POST/PUT/PATCH/DELETE, validated as the real server validates them
    (422 `CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: ...`)."""
    kind = {"POST": "CreateOptions", "PUT": "UpdateOptions", "PATCH": "PatchOptions",
            "DELETE": "DeleteOptions"}[method]
    causes: list[FieldCause] = []
    dry_run = [v for v in str(params.get("dryRun") or "").split(",") if v]
    if method == "DELETE" and isinstance(body, dict) and isinstance(body.get("dryRun"), list):
        dry_run += [str(v) for v in body["dryRun"]]
    if any(v != "All" for v in dry_run):
        causes.append(FieldCause("dryRun", "FieldValueNotSupported",
                                 "Unsupported value: []string{"
                                 + ", ".join(json.dumps(v) for v in dry_run)
                                 + '}: supported values: "All"'))
    options = WriteOptions(dry_run=bool(dry_run))
    if method == "DELETE":
        if causes:
            raise _options_invalid(kind, causes)
        return options
    validation = str(params.get("fieldValidation") or "")
    if validation not in FIELD_VALIDATION_VALUES:
        supported = ", ".join(json.dumps(v) for v in FIELD_VALIDATION_VALUES)
        causes.append(FieldCause("fieldValidation", "FieldValueNotSupported",
                                 f"Unsupported value: {go_repr(validation)}: supported values: "
                                 f"{supported}"))
    options.field_validation = validation or WARN
    manager = str(params.get("fieldManager") or "")
    if len(manager) > FIELD_MANAGER_MAX:
        causes.append(FieldCause("fieldManager", "FieldValueTooLong",
                                 f"Too long: may not be more than {FIELD_MANAGER_MAX} bytes"))
    # Without fieldManager the real server names the manager after the User-Agent.
    options.field_manager = manager or (user_agent.split("/")[0] or "unknown")[:128]
    force = params.get("force")
    if method == "PATCH":
        if content_type != APPLY_PATCH and force is not None:
            causes.append(FieldCause("force", "FieldValueForbidden",
                                     "Forbidden: may not be specified for non-apply patch"))
        if content_type == APPLY_PATCH and not manager:
            causes.append(FieldCause("fieldManager", "FieldValueRequired",
                                     "Required value: is required for apply patch"))
    options.force = str(force).lower() in ("true", "1")
    if causes:
        raise _options_invalid(kind, causes)
    if method in ("POST", "PUT") or content_type.endswith("merge-patch+json"):
        options.duplicates, options.order = duplicate_fields(raw_body)
        options.document_order = method in ("POST", "PUT")
    return options


def duplicate_fields(raw_body: bytes) -> tuple[list[str], dict[str, int]]:
    """Paths of keys given twice in one JSON object (`spec.size`), in document order, and
    the position of every path (duplicates as `dup:<path>`) in the document."""
    paths: list[str] = []
    order: dict[str, int] = {}

    class Node(dict[str, Any]):
        dups: list[str]

    def hook(pairs: list[tuple[str, Any]]) -> Node:
        node = Node()
        node.dups = []
        for key, value in pairs:
            if key in node and key not in node.dups:
                node.dups.append(key)
            node[key] = value
        return node

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Node):
            for key, item in value.items():
                here = f"{path}.{key}" if path else key
                order.setdefault(here, len(order))
                if key in value.dups:
                    paths.append(here)
                    order[f"dup:{here}"] = len(order)
                walk(item, here)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    if not raw_body:
        return [], {}
    try:
        walk(json.loads(raw_body, object_pairs_hook=hook), "")
    except ValueError:
        return [], {}
    return paths, order
