"""Errors of the Kubernetes API emulator, rendered as the real server's `Status` objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aegis.sandbox.apiserver_resources import ResourceInfo

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class FieldCause:
    """One entry of `details.causes`: a field path, a machine reason, a human message."""

    field: str
    reason: str
    message: str

    def to_api(self) -> JsonDict:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def render(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass
class ApiError(Exception):
    """An error answered as a `Status` body with the given HTTP code and reason."""

    code: int
    reason: str
    message: str
    details: JsonDict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> JsonDict:
        body: JsonDict = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(info: ResourceInfo, name: str, *, kind: str | None = None) -> JsonDict:
    details: JsonDict = {"name": name}
    if info.group:
        details["group"] = info.group
    details["kind"] = kind if kind is not None else info.plural
    return details


def not_found(info: ResourceInfo, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{info.group_resource} "{name}" not found',
                    _details(info, name))


def already_exists(info: ResourceInfo, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{info.group_resource} "{name}" already exists',
                    _details(info, name))


def conflict(info: ResourceInfo, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {info.group_resource} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        _details(info, name),
    )


def invalid(info: ResourceInfo, name: str, causes: list[FieldCause]) -> ApiError:
    kind_group = f"{info.kind}.{info.group}" if info.group else info.kind
    rendered = [cause.render() for cause in causes]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details = _details(info, name, kind=info.kind)
    details["causes"] = [cause.to_api() for cause in causes]
    return ApiError(422, "Invalid", f'{kind_group} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(info: ResourceInfo, name: str, message: str) -> ApiError:
    return ApiError(403, "Forbidden", message, _details(info, name))


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def page_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource",
                    {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not"
                                 f" found: {path}"}]})


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
