"""Models → CustomResourceDefinitions. The models are the single source of truth; `crds/` and
the chart's copy are generated (`aegis crds`) and a test fails when they drift."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from aegis import GROUP, VERSION
from aegis.api import CATEGORY, KINDS, Kind

# Bounds given to unbounded strings and lists so that the API server's CEL cost estimate of
# rules such as `self == oldSelf` stays within budget (an unbounded schema makes the
# estimate infinite and the CRD is rejected).
DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_ITEMS = 128

_DROP = {"title", "additionalProperties", "$defs", "discriminator"}


def _structural(node: Any, defs: dict[str, Any], bound: bool) -> Any:
    """Rewrite one pydantic JSON-schema node as a structural OpenAPI v3 schema node."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        target.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional[X] are not structural: {options}")
        inner = dict(options[0])
        for key in ("description", "default"):
            if key in node:
                inner[key] = node[key]
        node.pop("default", None)
        return _structural({**node, **inner}, defs, bound)

    out: dict[str, Any] = {}
    extra = node.get("additionalProperties")
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs, bound) for name, v in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs, bound)
        elif key == "description":
            out[key] = " ".join(str(value).split())
        else:
            out[key] = value
    if node.get("type") == "object" and "properties" not in node:
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs, bound)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if (
        bound
        and out.get("type") == "string"
        and "maxLength" not in out
        and "format" not in out
        and "enum" not in out
    ):
        out["maxLength"] = DEFAULT_MAX_LENGTH
    if bound and out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = DEFAULT_MAX_ITEMS
    return out


def model_schema(model: type[Any], *, bound: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}), bound)  # type: ignore[no-any-return]


def crd_for(kind: Kind) -> dict[str, Any]:
    spec_schema = model_schema(kind.spec, bound=True)
    status_schema = model_schema(kind.status, bound=False)
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in kind.columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "aegis", "app.kubernetes.io/part-of": "aegis"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short_name],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": kind.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `aegis crds` from operator/aegis/api. Do not edit.\n"


def render(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd_for(kind), sort_keys=False, width=100)


# kopf's own peering CRD (the schema of kopf's docs/peering.rst), for leader election of the
# operator's replicas (k8s/peering.py). Cluster-scoped: one election per installation. Helm
# skips a CRD that already exists, so another kopf operator having installed it is fine.
PEERING_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {
        "scope": "Cluster",
        "group": "kopf.dev",
        "names": {
            "kind": "ClusterKopfPeering",
            "plural": "clusterkopfpeerings",
            "singular": "clusterkopfpeering",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                },
            }
        ],
    },
}
PEERING_HEADER = (
    "# kopf's peering CRD (leader election of the operator's replicas), by `aegis crds`.\n"
)


def rendered() -> dict[str, str]:
    """File name → content of every CRD."""
    files = {f"{k.crd_name}.yaml": render(k) for k in KINDS}
    files["clusterkopfpeerings.kopf.dev.yaml"] = PEERING_HEADER + yaml.safe_dump(
        PEERING_CRD, sort_keys=False, width=100
    )
    return files


def write(root: Path) -> list[Path]:
    written = []
    for directory in (root / "crds", root / "charts" / "aegis" / "crds"):
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in rendered().items():
            path = directory / name
            path.write_text(text)
            written.append(path)
    return written
