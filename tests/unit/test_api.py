"""The API contract: packaging, the generated CRDs, and refusal of invalid manifests."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import aegis
from aegis.api import KINDS, KINDS_BY_NAME, crdgen
from aegis.reconcilers.validation import SpecError, parse_spec
from aegis.sandbox.apiserver_cel import evaluate_rules
from aegis.sandbox.apiserver_schema import validate

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def test_import_operator_is_still_the_standard_library() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    module = importlib.import_module("operator")
    assert module.__file__ is not None
    assert Path(module.__file__).parent == Path(sys.modules["os"].__file__ or "").parent
    assert module.itemgetter(1)([0, 7]) == 7
    assert Path(aegis.__file__).parent == ROOT / "operator" / "aegis"


@pytest.mark.parametrize("directory", ["crds", "charts/aegis/crds"])
def test_crds_match_the_models(directory: str) -> None:
    for name, text in crdgen.rendered().items():
        path = ROOT / directory / name
        assert path.exists(), f"{path} is missing: run `aegis crds`"
        assert path.read_text() == text, f"{path} differs from the models: run `aegis crds`"
    assert sorted(p.name for p in (ROOT / directory).glob("*.yaml")) == sorted(crdgen.rendered())


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if "items" in node:
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_shape(kind: Any) -> None:
    crd = yaml.safe_load((ROOT / "crds" / f"{kind.crd_name}.yaml").read_text())
    names = crd["spec"]["names"]
    assert names["shortNames"] == [kind.short_name]
    assert names["categories"] == ["dr"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert "Age" in columns and len(columns) >= 4
    schema = version["schema"]["openAPIV3Schema"]
    # Structural: every node has a type (or preserves unknown fields), and a description
    # on every spec field so that `kubectl explain` explains it.
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert "anyOf" not in node and "$ref" not in node, path
        if path.count(".") >= 1 and not path.endswith("[]") and not path.endswith("}"):
            assert node.get("description"), f"{kind.kind} {path} has no description"
        # No structural oneOf: kube-apiserver prints a failing oneOf as `<nil>: Invalid
        # value: "": ... Found 2 valid alternatives` before the CEL rule's own message.
        assert "oneOf" not in node, f"{path}: exactly-one belongs in a CEL rule, not oneOf"


def test_cross_field_rules_are_cel() -> None:
    rules = {
        k.kind: [
            r["rule"]
            for _, node in _walk(
                yaml.safe_load((ROOT / "crds" / f"{k.crd_name}.yaml").read_text())["spec"][
                    "versions"
                ][0]["schema"]["openAPIV3Schema"]
            )
            for r in node.get("x-kubernetes-validations", [])
        ]
        for k in KINDS
    }
    assert "self == oldSelf" in rules["RecoveryPoint"]
    assert "self == oldSelf" in rules["Restore"]
    assert any("has(self.postgres)" in r and "has(self.redis)" in r for r in rules["BackupPolicy"])
    assert any("recoveryPointRef" in r and "policyRef" in r for r in rules["Restore"])


def _json_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / f"{KINDS_BY_NAME[kind].crd_name}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _header(path: Path, key: str) -> str:
    match = re.search(rf"^# {key}: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} lacks a '# {key}:' header"
    return match.group(1).strip()


def test_corpus_is_large_and_covers_the_required_cases() -> None:
    names = {p.stem for p in INVALID}
    assert len(names) >= 30
    for needed in ("bad-cron", "bad-time-zone", "two-sources", "negative-keep-last", "port-zero",
                   "unknown-compression", "missing-storage", "port-string", "both-refs"):
        assert any(needed in n for n in names), needed


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_refused(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    expected_field = _header(path, "expect-field")
    rejected_by = _header(path, "rejected-by")
    schema = _json_schema(manifest["kind"])
    schema_errors: list[Any] = list(jsonschema.Draft7Validator(schema).iter_errors(manifest))
    if not schema_errors:
        # The CEL rules (x-kubernetes-validations) are part of what the API server enforces.
        body_schema = {**schema, "properties": {
            k: v for k, v in schema["properties"].items() if k not in ("metadata", "kind")}}
        schema_errors = validate(manifest, body_schema, cel=evaluate_rules)
        for cause in schema_errors:
            # What a user reads is the rule's message, never a combinator's complaint.
            assert cause.message.startswith('Invalid value: "object": '), cause
    if rejected_by == "schema":
        assert schema_errors, f"{path.name}: the generated CRD schema accepts it"
    # The operator refuses it too (defence in depth for servers that skip CEL or run an
    # older CRD), naming the field in the reason and the message.
    result = parse_spec(KINDS_BY_NAME[manifest["kind"]].spec, manifest["spec"])
    assert isinstance(result, SpecError), f"{path.name}: the model accepts it"
    assert result.field == expected_field, result
    assert result.message.startswith(expected_field), result
    last = [p for p in re.split(r"[.\[\]]+", expected_field) if p and not p.isdigit()][-1]
    assert last.lower() in result.reason.lower(), result
    assert result.reason[0].isupper() and re.fullmatch(r"[A-Za-z0-9]+", result.reason)
