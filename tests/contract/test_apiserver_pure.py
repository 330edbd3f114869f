"""Plain unit tests of the emulator's pure helpers (no server involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis.sandbox.apiserver import parse_api_path
from aegis.sandbox.apiserver_auth import token_request_spec_from_protobuf
from aegis.sandbox.apiserver_cel import evaluate_rules
from aegis.sandbox.apiserver_patch import strategic_merge_patch
from aegis.sandbox.apiserver_rbac import Attributes, request_attributes, rule_allows
from aegis.sandbox.apiserver_select import SelectorError, parse_label_selector
from aegis.sandbox.apiserver_table import evaluate_jsonpath, human_duration

ONE_OF = {"x-kubernetes-validations": [
    {"rule": "(has(self.postgres) ? 1 : 0) + (has(self.redis) ? 1 : 0) == 1",
     "message": "set exactly one of postgres, redis"}]}


@pytest.mark.parametrize(("value", "failures"), [
    ({"postgres": {}}, 0), ({"redis": {}}, 0), ({}, 1), ({"postgres": {}, "redis": {}}, 1)])
def test_cel_one_of_rule(value: dict[str, object], failures: int) -> None:
    causes = evaluate_rules(value, None, ONE_OF, "spec.source")
    assert len(causes) == failures
    assert all(c.field == "spec.source" and "exactly one" in c.message for c in causes)


def test_cel_transition_rule_runs_on_update_only() -> None:
    schema = {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]}
    assert evaluate_rules({"a": 1}, None, schema, "spec") == []
    assert evaluate_rules({"a": 1}, {"a": 1}, schema, "spec") == []
    assert [c.message for c in evaluate_rules({"a": 2}, {"a": 1}, schema, "spec")] == [
        'Invalid value: "object": immutable']


def test_cel_unsupported_rules_are_skipped() -> None:
    schema = {"x-kubernetes-validations": [{"rule": "self.all(x, x > 0)"}]}
    assert evaluate_rules([1], None, schema, "spec") == []


def test_jsonpath_condition_filter() -> None:
    obj = {"status": {"conditions": [{"type": "Synced", "status": "False"},
                                     {"type": "Ready", "status": "True"}]}}
    assert evaluate_jsonpath('.status.conditions[?(@.type=="Ready")].status', obj) == ["True"]
    assert evaluate_jsonpath(".status.conditions[*].type", obj) == ["Synced", "Ready"]
    assert evaluate_jsonpath(".status.conditions[0].status", obj) == ["False"]
    assert evaluate_jsonpath(".status.missing", obj) == []


@pytest.mark.parametrize(("seconds", "text"), [
    (5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600 + 60, "3h1m"),
    (30 * 3600, "30h"), (3 * 86400, "3d"), (-5, "<invalid>")])
def test_human_duration_matches_kubernetes(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_label_selector_parsing() -> None:
    reqs = parse_label_selector("a in (x, y),!b,c!=d,e")
    assert [(r.key, r.op, r.values) for r in reqs] == [
        ("a", "in", ("x", "y")), ("b", "!exists", ()), ("c", "!=", ("d",)), ("e", "exists", ())]
    with pytest.raises(SelectorError):
        parse_label_selector("a in x")


def test_strategic_merge_by_key_and_directives() -> None:
    target = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}],
              "finalizers": ["x"]}
    patch = {"containers": [{"name": "a", "image": "2"}, {"name": "b", "$patch": "delete"}],
             "finalizers": ["y"], "$setElementOrder/containers": [{"name": "a"}]}
    assert strategic_merge_patch(target, patch) == {
        "containers": [{"name": "a", "image": "2"}], "finalizers": ["x", "y"]}


def test_api_paths_including_the_namespace_list() -> None:
    assert parse_api_path("/api/v1/namespaces") is not None
    ns_status = parse_api_path("/api/v1/namespaces/x/status")
    assert ns_status is not None and (ns_status.plural, ns_status.name, ns_status.subresource) == (
        "namespaces", "x", "status")
    cr = parse_api_path("/apis/dr.aegis.dev/v1alpha1/namespaces/n/backuppolicies/p/status")
    assert cr is not None and (cr.namespace, cr.plural, cr.name, cr.subresource) == (
        "n", "backuppolicies", "p", "status")
    assert parse_api_path("/metrics") is None


def test_the_emulator_records_every_field_a_write_lost(tmp_path: Path) -> None:
    """What the e2e suite's `nothing_written_is_pruned` check reads (emulator only)."""
    from kubernetes import client, config

    from aegis.sandbox.apiserver import ApiServer

    with ApiServer() as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        core.create_namespaced_config_map("default", {
            "metadata": {"name": "c", "typo": 1}, "data": {"k": "v"}, "dataa": {}})
        assert server.call(lambda: list(server.handler.dropped_fields)) == [
            'POST /api/v1/namespaces/default/configmaps: unknown field "metadata.typo"',
            'POST /api/v1/namespaces/default/configmaps: unknown field "dataa"',
        ]


# ---- RBAC request attributes and rule matching (apiserver_rbac) ---------------------------


def _attrs(method: str, path: str, **params: str) -> Attributes:
    parsed = parse_api_path(path)
    return request_attributes(
        method, path, params, group=parsed.group if parsed and parsed.plural else None,
        plural=parsed.plural if parsed else None, namespace=parsed.namespace if parsed else None,
        name=parsed.name if parsed else None, subresource=parsed.subresource if parsed else None)


@pytest.mark.parametrize(("method", "path", "params", "expected"), [
    ("GET", "/api/v1/namespaces/a/pods", {}, ("list", "", "pods", "", "a", "")),
    ("GET", "/api/v1/namespaces/a/pods", {"watch": "true"}, ("watch", "", "pods", "", "a", "")),
    ("GET", "/api/v1/namespaces/a/pods", {"fieldSelector": "metadata.name=p"},
     ("list", "", "pods", "", "a", "p")),
    ("DELETE", "/api/v1/namespaces/a/pods", {}, ("deletecollection", "", "pods", "", "a", "")),
    ("PUT", "/apis/apps/v1/namespaces/a/deployments/d/scale", {},
     ("update", "apps", "deployments", "scale", "a", "d")),
    ("POST", "/api/v1/namespaces/a/serviceaccounts/s/token", {},
     ("create", "", "serviceaccounts", "token", "a", "s")),
    ("GET", "/api/v1/namespaces/a", {}, ("get", "", "namespaces", "", "a", "a")),
    ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
])
def test_request_attributes(method: str, path: str, params: dict[str, str],
                            expected: tuple[str, ...]) -> None:
    attrs = _attrs(method, path, **params)
    assert (attrs.verb, attrs.group, attrs.resource, attrs.subresource, attrs.namespace,
            attrs.name) == expected


def test_non_resource_attributes_and_url_rules() -> None:
    attrs = _attrs("GET", "/apis/apps/v1")
    assert attrs.resource_request is False and attrs.path == "/apis/apps/v1"
    assert rule_allows({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}, attrs)
    assert not rule_allows({"verbs": ["get"], "nonResourceURLs": ["/apis"]}, attrs)
    assert not rule_allows({"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"]}, attrs)


def test_resource_rules_wildcards_and_subresources() -> None:
    status = Attributes("patch", True, "dr.aegis.dev", "backuppolicies", "status", "ns", "p")
    assert rule_allows({"verbs": ["patch"], "apiGroups": ["dr.aegis.dev"],
                        "resources": ["*/status"]}, status)
    assert rule_allows({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, status)
    assert not rule_allows({"verbs": ["patch"], "apiGroups": ["dr.aegis.dev"],
                            "resources": ["backuppolicies"]}, status)
    assert not rule_allows({"verbs": ["patch"], "apiGroups": ["dr.aegis.dev"],
                            "resources": ["backuppolicies/status"],
                            "resourceNames": ["other"]}, status)


def test_protobuf_token_request_as_kubectl_sends_it() -> None:
    # `kubectl create token x --duration 15m --audience a` (k8s envelope, runtime.Unknown).
    spec_bytes = b"\x0a\x01a" + b"\x20" + bytes([0x84, 0x07])  # audiences=["a"], exp=900
    raw = b"\x0a\x00" + b"\x12" + bytes([len(spec_bytes)]) + spec_bytes
    type_meta = b"\x0a\x18authentication.k8s.io/v1\x12\x0cTokenRequest"
    body = (b"k8s\x00" + b"\x0a" + bytes([len(type_meta)]) + type_meta
            + b"\x12" + bytes([len(raw)]) + raw)
    assert token_request_spec_from_protobuf(body) == {"audiences": ["a"],
                                                       "expirationSeconds": 900}
