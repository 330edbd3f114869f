"""examples/: every custom resource is valid against its generated CRD schema (with
jsonschema) and against the pydantic model; built-in objects against the Kubernetes schemas;
and every reference between them resolves, so `kubectl apply -f examples/` gives a
consistent set."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from aegis import API_VERSION
from aegis.api import KINDS, KINDS_BY_NAME

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))  # command-source/ too
CRDS = ROOT / "crds"
NAMESPACE = "shop"
KUBE_VERSION = "1.31.0"

Manifest = dict[str, Any]
Schema = dict[str, Any]


def _documents() -> list[tuple[str, Manifest]]:
    found = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


DOCUMENTS = _documents()
CUSTOM = [(name, doc) for name, doc in DOCUMENTS if doc["apiVersion"] == API_VERSION]
BUILTIN = [(name, doc) for name, doc in DOCUMENTS if doc["apiVersion"] != API_VERSION]


# ---- OpenAPI v3 (structural CRD schema) → JSON Schema -----------------------------------------


def json_schema(node: Any) -> Any:
    """The JSON Schema (draft 7) equivalent of a CRD's openAPIV3Schema, as strict as the API
    server with `kubectl apply` (field validation Strict): unknown fields are errors unless the
    schema preserves them. CEL rules (`x-kubernetes-validations`) can't be checked here; the
    pydantic model, which mirrors each of them, is checked alongside."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key.startswith("x-kubernetes-") or key in ("nullable", "example", "externalDocs"):
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            # OpenAPI 3.0's boolean form modifies minimum/maximum; draft 7 takes the number.
            bound = node["minimum" if key == "exclusiveMinimum" else "maximum"]
            if value:
                out[key] = bound
        else:
            out[key] = json_schema(value)
    if node.get("exclusiveMinimum") is True:
        out.pop("minimum", None)
    if node.get("exclusiveMaximum") is True:
        out.pop("maximum", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(kind: str) -> Schema:
    crd = yaml.safe_load((CRDS / f"{KINDS_BY_NAME[kind].crd_name}.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    schema: Schema = json_schema(version["schema"]["openAPIV3Schema"])
    return schema


def schema_errors(doc: Manifest) -> list[str]:
    validator = jsonschema.Draft7Validator(
        crd_schema(doc["kind"]), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_json_schema_conversion() -> None:
    openapi = {
        "type": "object",
        "required": ["port"],
        "properties": {
            "port": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
            "size": {"x-kubernetes-int-or-string": True},
            "note": {"type": "string", "nullable": True},
            "free": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "string"}},
            },
        },
        "x-kubernetes-validations": [{"rule": "self.port > 0"}],
    }
    validator = jsonschema.Draft7Validator(json_schema(openapi))
    assert validator.is_valid({"port": 1, "size": "1Gi", "note": None, "free": {"b": 1}})
    assert validator.is_valid({"port": 1, "size": 3})
    assert not validator.is_valid({"port": 0})  # exclusive minimum
    assert not validator.is_valid({"port": 1, "size": 1.5})
    assert not validator.is_valid({"port": 1, "typo": True})  # unknown field
    assert not validator.is_valid({})  # required


# ---- the examples -------------------------------------------------------------------------


def test_there_is_an_example_of_every_kind() -> None:
    assert {doc["kind"] for _, doc in CUSTOM} == {k.kind for k in KINDS}
    assert {doc["kind"] for _, doc in BUILTIN} == {"Namespace", "Secret"}


@pytest.mark.parametrize(("name", "doc"), CUSTOM, ids=[n for n, _ in CUSTOM])
def test_custom_resource_matches_its_crd_schema(name: str, doc: Manifest) -> None:
    assert schema_errors(doc) == [], name


@pytest.mark.parametrize(("name", "doc"), CUSTOM, ids=[n for n, _ in CUSTOM])
def test_custom_resource_parses_with_its_model(name: str, doc: Manifest) -> None:
    model = KINDS_BY_NAME[doc["kind"]].spec.model_validate(doc["spec"])
    # What the operator reads back (defaults filled in) is still valid on the API server.
    normalized = {**doc, "spec": model.model_dump(mode="json", by_alias=True, exclude_none=True)}
    assert schema_errors(normalized) == [], name


@pytest.mark.parametrize(("name", "doc"), CUSTOM, ids=[n for n, _ in CUSTOM])
def test_the_schema_check_would_catch_a_mistake(name: str, doc: Manifest) -> None:
    """Not a rubber stamp: a misspelt field and a wrong type in each example are refused."""
    typo = copy.deepcopy(doc)
    typo["spec"]["historyLimt"] = 3
    assert any("historyLimt" in e for e in schema_errors(typo)), name
    wrong_type = copy.deepcopy(doc)
    first_key = next(iter(wrong_type["spec"]))
    wrong_type["spec"][first_key] = 12345 if isinstance(doc["spec"][first_key], str) else "x"
    assert schema_errors(wrong_type), name


@pytest.mark.parametrize(("name", "doc"), BUILTIN, ids=[n for n, _ in BUILTIN])
def test_builtin_object_is_valid(name: str, doc: Manifest) -> None:
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_everything_is_in_the_example_namespace() -> None:
    namespaces = [doc for _, doc in BUILTIN if doc["kind"] == "Namespace"]
    assert [ns["metadata"]["name"] for ns in namespaces] == [NAMESPACE]
    # kubectl apply -f examples/ reads files in name order: the namespace must come first.
    assert EXAMPLES[0].name == "00-namespace.yaml"
    for name, doc in DOCUMENTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, name


def _secret_refs(node: Any, path: str = "spec") -> Iterator[tuple[str, Manifest]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith(("SecretRef", "secretKeyRef")) and isinstance(value, dict):
                yield f"{path}.{key}", value
            else:
                yield from _secret_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _secret_refs(item, f"{path}[{index}]")


def test_every_referenced_secret_and_key_exists() -> None:
    secrets = {
        doc["metadata"]["name"]: {**doc.get("data", {}), **doc.get("stringData", {})}
        for _, doc in BUILTIN
        if doc["kind"] == "Secret"
    }
    used: set[str] = set()
    for name, doc in CUSTOM:
        for path, ref in _secret_refs(doc["spec"]):
            assert ref["name"] in secrets, f"{name} {path}: no Secret {ref['name']}"
            if "key" in ref:
                assert ref["key"] in secrets[ref["name"]], f"{name} {path}: no key {ref['key']}"
            used.add(ref["name"])
    assert used == set(secrets), f"unused Secrets: {set(secrets) - used}"
    # Whole-Secret references need their documented keys.
    for name in ("backup-s3-credentials", "route53-credentials"):
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secrets[name]), name
    # Encryption keys are 32 bytes, here written as 64 hex digits.
    for key_id, key in secrets["backup-encryption-keys"].items():
        assert len(bytes.fromhex(key)) == 32, key_id


def test_every_object_reference_resolves() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in CUSTOM}
    wanted = {
        "policyRef": "BackupPolicy",
        "recoveryPointRef": "RecoveryPoint",
        "planRef": "FailoverPlan",
    }

    def refs(node: Any) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in wanted:
                    yield wanted[key], value["name"]
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    found = 0
    for name, doc in CUSTOM:
        for kind, target in refs(doc["spec"]):
            assert (kind, target) in names, f"{name}: {kind} {target} is not in examples/"
            found += 1
    assert found >= 3


def test_every_example_explains_itself() -> None:
    for path in EXAMPLES:
        assert path.read_text().lstrip().startswith("#"), f"{path.name} has no leading comment"
