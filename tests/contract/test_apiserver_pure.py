"""Plain unit tests of the emulator's pure helpers (no server involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis.sandbox.apiserver import parse_api_path
from aegis.sandbox.apiserver_cel import evaluate_rules
from aegis.sandbox.apiserver_patch import strategic_merge_patch
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
