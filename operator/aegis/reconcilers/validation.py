"""Spec → model, or a SpecError that names the field and says how to fix it.

The CRD schema rejects most bad input at the API server. What reaches the operator and is
still wrong (a cron expression croniter refuses, an unknown time zone, a cross-field rule on
a server without CEL) becomes `Ready=False` / `Accepted=False` with these reason and message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from aegis.api.common import camel_reason

M = TypeVar("M", bound=BaseModel)

MAX_SHOWN_INPUT = 80


@dataclass(frozen=True)
class SpecError:
    """Why a spec was refused, for a condition and a Warning event."""

    field: str
    """Dotted path of the offending field, e.g. spec.source.postgres.port."""
    reason: str
    """CamelCase reason naming the field, e.g. InvalidPort."""
    message: str
    """What is wrong and how to fix it."""


def _path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_INPUT else text[: MAX_SHOWN_INPUT - 3] + "..."


def _fix(error: ErrorDetails, path: str) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"add {path}"
    if kind == "extra_forbidden":
        return f"remove {path}; it is not a field of this kind (check the spelling)"
    if kind == "literal_error":
        return f"set {path} to {ctx.get('expected', 'one of the allowed values')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"set {path} within the allowed range"
    if kind == "string_pattern_mismatch":
        return f"set {path} to a value matching {ctx.get('pattern')}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"set {path} to a value of the right type"
    return f"correct {path}"


def describe(error: ValidationError) -> SpecError:
    """The first error of `error`, as a SpecError (one clear problem beats ten at once)."""
    details = error.errors(include_url=False)
    first = details[0]
    loc = tuple(first["loc"])
    path = _path(loc)
    named = [p for p in loc if isinstance(p, str)]
    message: str = first["msg"].removeprefix("Value error, ")
    more = len(details) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} after this one.)" if more else ""
    if first["type"] == "value_error":
        # Our own validators write messages that start with the field they are about
        # ("schedule: ..."/ "'61 * * * *' is not a valid cron ..." on a located field).
        head, sep, rest = message.partition(": ")
        if sep and not named and " " not in head:
            named = head.split(".")
            path = f"{path}.{head}"
            message = rest
        elif sep and " " not in head and named:
            path = f"{path}.{head}"
            named = [*named, *head.split(".")]
            message = rest
        return SpecError(
            field=path,
            reason=camel_reason("invalid", named[-1] if named else "spec"),
            message=f"{path}: {message}.{tail}".replace("..", "."),
        )
    text = f"{path}: {message}"
    if first["type"] not in ("missing", "extra_forbidden") and "input" in first:
        text += f" (got {_shown(first['input'])})"
    text += f". Fix: {_fix(first, path)}.{tail}"
    reason_word = "missing" if first["type"] == "missing" else "invalid"
    if first["type"] == "extra_forbidden":
        reason_word = "unknown"
    return SpecError(
        field=path, reason=camel_reason(reason_word, named[-1] if named else "spec"), message=text
    )


def parse_spec(model: type[M], spec: Any) -> M | SpecError:
    """Parse a resource's spec, returning the model or why it was refused."""
    if not isinstance(spec, dict):
        return SpecError(
            field="spec", reason="MissingSpec", message="spec: must be an object. Fix: add a spec."
        )
    try:
        # Strict JSON mode types values as the API server does: "yes" is not a boolean and
        # "5432" is not a port, while RFC 3339 strings are still times.
        return model.model_validate_json(json.dumps(spec), strict=True)
    except ValidationError as error:
        return describe(error)
