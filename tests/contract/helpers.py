"""Helpers of the contract tests: a CRD of our own, raw HTTP and watch readers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

GROUP = "contract.aegis.dev"
VERSION = "v1"
PLURAL = "widgets"
WIDGET_API = f"{GROUP}/{VERSION}"

# A CRD of our own, so the schema tests do not move when the Aegis API evolves.
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget",
                  "listKind": "WidgetList", "shortNames": ["wdg"],
                  "categories": ["contract"]},
        "versions": [{
            "name": VERSION, "served": True, "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                {"name": "Ready", "type": "string",
                 "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size", "mode"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "mode": {"type": "string", "enum": ["Fast", "Slow"]},
                            "name": {"type": "string", "minLength": 3, "maxLength": 8,
                                     "pattern": "^[a-z]+$"},
                            "tags": {"type": "array", "minItems": 1, "maxItems": 3,
                                     "items": {"type": "string"}},
                            "color": {"type": "string", "default": "blue"},
                            "nested": {"type": "object", "required": ["host"], "properties": {
                                "host": {"type": "string"},
                                "port": {"type": "integer", "default": 80},
                            }},
                            "items": {"type": "array", "items": {
                                "type": "object", "required": ["name"], "properties": {
                                    "name": {"type": "string"},
                                    "value": {"type": "integer"},
                                }}},
                            "extra": {"type": "object",
                                      "x-kubernetes-preserve-unknown-fields": True},
                            "choice": {
                                "type": "object",
                                "properties": {"a": {"type": "string"},
                                               "b": {"type": "string"}},
                                "x-kubernetes-validations": [{
                                    "rule": "(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) == 1",
                                    "message": "set exactly one of a, b"}],
                            },
                        },
                    },
                    "status": {"type": "object", "properties": {
                        "phase": {"type": "string"},
                        "observedGeneration": {"type": "integer"},
                        "conditions": {"type": "array", "items": {
                            "type": "object", "properties": {
                                "type": {"type": "string"}, "status": {"type": "string"},
                                "reason": {"type": "string"}}}},
                    }},
                },
            }},
        }],
    },
}


def wait_for(check: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class RawResponse:
    status: int
    body: Any
    headers: dict[str, str]


def raw(api: Any, method: str, path: str, body: Any = None, *,
        query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
        ) -> RawResponse:
    """One HTTP request through the ApiClient's own transport (auth/TLS as configured)."""
    all_headers = {"Accept": "application/json", **(headers or {})}
    if body is not None:
        all_headers.setdefault("Content-Type", "application/json")
    try:
        response = api.call_api(
            path, method, query_params=list((query or {}).items()), header_params=all_headers,
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=False)
        http = response
        data = http.data
        status = http.status
        response_headers = dict(http.headers)
    except ApiException as exc:
        data, status, response_headers = exc.body, exc.status, dict(exc.headers or {})
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = data.decode() if isinstance(data, bytes) else data
    return RawResponse(status, parsed, response_headers)


def raw_bytes(api: Any, method: str, path: str, data: bytes, *,
              query: dict[str, str] | None = None,
              content_type: str = "application/json") -> RawResponse:
    """A request whose body is sent byte for byte (the client would re-encode a str body),
    through the ApiClient's own connection pool and credentials."""
    from urllib.parse import urlencode

    headers = {"Accept": "application/json", "Content-Type": content_type}
    auth = api.configuration.auth_settings().get("BearerToken") or {}
    if auth.get("value"):
        headers[auth["key"]] = auth["value"]
    url = api.configuration.host + path + (f"?{urlencode(query)}" if query else "")
    response = api.rest_client.pool_manager.request(method, url, body=data, headers=headers)
    try:
        parsed = json.loads(response.data) if response.data else None
    except ValueError:
        parsed = response.data.decode()
    return RawResponse(response.status, parsed, dict(response.headers))


def watch_events(api: Any, path: str, query: dict[str, str], *,
                 until: Callable[[list[dict[str, Any]]], bool] | None = None,
                 timeout: float = 20.0) -> tuple[list[dict[str, Any]], float]:
    """Read a watch stream until `until(events)` or the server closes it; (events, seconds)."""
    started = time.monotonic()
    response = api.call_api(
        path, "GET", query_params=list({"watch": "true", **query}.items()),
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
        _preload_content=False, _return_http_data_only=True, _request_timeout=timeout)
    events: list[dict[str, Any]] = []
    try:
        buffer = b""
        for chunk in response.stream(4096, decode_content=False):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    events.append(json.loads(line))
            if until is not None and until(events):
                break
    finally:
        response.release_conn()
        response.close()
    return events, time.monotonic() - started


def widget(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"size": 3, "mode": "Fast"}
    body.update(spec)
    return {"apiVersion": WIDGET_API, "kind": "Widget", "metadata": {"name": name},
            "spec": body}


def backup_policy(name: str, **extra_meta: Any) -> dict[str, Any]:
    """A minimal valid BackupPolicy of the real Aegis CRD."""
    return {
        "apiVersion": "dr.aegis.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": name, **extra_meta},
        "spec": {
            "schedule": "0 2 * * *",
            "source": {"postgres": {"host": "db.example", "database": "app",
                                    "userSecretRef": {"name": "db", "key": "user"},
                                    "passwordSecretRef": {"name": "db", "key": "password"}}},
            "storage": {"bucket": "aegis-backups"},
            "encryption": {"keySecretRef": {"name": "backup-key"}},
        },
    }


@dataclass
class WidgetApi:
    """CustomObjectsApi calls for Widgets in one namespace."""

    api: client.CustomObjectsApi
    namespace: str

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body)
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name)
        return result

    def patch(self, name: str, body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, body)
        return result

    def patch_status(self, name: str, body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, body)
        return result

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.api.replace_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, body)
        return result

    def delete(self, name: str, **kwargs: Any) -> Any:
        return self.api.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, **kwargs)

    def path(self, name: str = "", sub: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"
        return "/".join(p for p in (base, name, sub) if p)

    def gone(self, name: str) -> bool:
        try:
            self.get(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False
