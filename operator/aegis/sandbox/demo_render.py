"""The demo's rendering: the examples' placeholder hosts, buckets and credentials replaced by
the sandbox's real endpoints in the parsed YAML (the files are not edited), and the invalid
examples told apart from the valid ones. Pure: no sandbox is needed."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

NAMESPACE = "shop"
GROUP, VERSION = "dr.aegis.dev", "v1alpha1"
PLACEHOLDER_MARKS = (".svc.cluster.local", "example.com")
"""A host or URL still holding one of these after rendering was not mapped to the sandbox."""

JsonDict = dict[str, Any]


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class SandboxEndpoints:
    """Where each placeholder of the examples points in the sandbox."""

    hosts: dict[str, tuple[str, int]]
    """Placeholder host → (host, port)."""
    url_prefixes: dict[str, str]
    """Placeholder URL prefix → sandbox URL prefix."""
    s3_endpoint: str
    route53_endpoint: str
    hosted_zones: dict[str, str]
    """Placeholder hosted zone id → the zone's id in moto."""
    secret_values: dict[str, dict[str, str]]
    """Secret name → key → value; every key of every example Secret must be here."""


def _render_node(node: Any, endpoints: SandboxEndpoints, problems: list[str], path: str) -> Any:
    if isinstance(node, list):
        return [_render_node(v, endpoints, problems, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {k: _render_node(v, endpoints, problems, f"{path}.{k}") for k, v in node.items()}
    host = out.get("host")
    if isinstance(host, str) and host in endpoints.hosts:
        out["host"], out["port"] = endpoints.hosts[host]
        if "sslMode" in out:
            # The sandbox's servers have no TLS; production examples rightly require it.
            out["sslMode"] = "disable"
    if "bucket" in out:
        out["endpoint"] = endpoints.s3_endpoint
    zone = out.get("hostedZoneId")
    if isinstance(zone, str):
        if zone in endpoints.hosted_zones:
            out["hostedZoneId"] = endpoints.hosted_zones[zone]
            out["endpoint"] = endpoints.route53_endpoint
        else:
            problems.append(f"{path}.hostedZoneId {zone!r} has no sandbox zone")
    url = out.get("url")
    if isinstance(url, str):
        for prefix, replacement in endpoints.url_prefixes.items():
            if url.startswith(prefix):
                out["url"] = replacement + url[len(prefix) :]
                break
    for key in ("host", "url"):
        value = out.get(key)
        if isinstance(value, str) and any(mark in value for mark in PLACEHOLDER_MARKS):
            problems.append(f"{path}.{key} {value!r} has no sandbox counterpart")
    return out


def _render_secret(doc: JsonDict, endpoints: SandboxEndpoints, problems: list[str]) -> JsonDict:
    name = doc.get("metadata", {}).get("name", "?")
    values = endpoints.secret_values.get(name)
    if values is None:
        problems.append(f"Secret {name}: no sandbox values")
        return doc
    rendered = copy.deepcopy(doc)
    data: dict[str, str] = {}
    for key in doc.get("stringData") or {}:
        if key not in values:
            problems.append(f"Secret {name} key {key}: no sandbox value")
            continue
        data[key] = base64.b64encode(values[key].encode()).decode()
    # As `data`, the form a real API server stores stringData in (the emulator keeps
    # stringData as sent, and readers of Secrets look at data).
    rendered.pop("stringData", None)
    rendered["data"] = data
    return rendered


def render_documents(
    docs: Iterable[Any], endpoints: SandboxEndpoints
) -> tuple[list[JsonDict], list[str]]:
    """The documents with every placeholder replaced, and what could not be replaced."""
    problems: list[str] = []
    rendered: list[JsonDict] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        where = f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"
        if doc.get("kind") == "Secret":
            rendered.append(_render_secret(doc, endpoints, problems))
        else:
            rendered.append(_render_node(doc, endpoints, problems, where))
    return rendered, problems


def invalid_policies(valid: JsonDict) -> list[tuple[JsonDict, str]]:
    """Copies of a valid BackupPolicy, each wrong in one way the CRD schema lets through.

    Each comes with what is wrong, for the reader.
    """
    cases = (
        ("orders-db-minute-61", {"schedule": "61 * * * *"}, "cron minute 61"),
        ("orders-db-mars-time", {"timeZone": "Mars/Base"}, "time zone Mars/Base"),
        ("orders-db-february-31", {"schedule": "0 3 31 2 *"}, "a schedule that never fires"),
    )
    out = []
    for name, spec_change, what in cases:
        doc = copy.deepcopy(valid)
        doc["metadata"] = {"name": name, "namespace": valid["metadata"]["namespace"]}
        doc["spec"].update(spec_change)
        out.append((doc, what))
    return out


