"""What Aegis, kopf and kubectl rely on from kube-apiserver, checked against the emulator
(default) or a real cluster (AEGIS_TEST_KUBECONFIG). Nothing here depends on emulator-only
behaviour unless the test says so and skips on a real cluster.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.contract.helpers import (
    GROUP,
    PLURAL,
    VERSION,
    WidgetApi,
    backup_policy,
    raw,
    wait_for,
    watch_events,
    widget,
)

REAL_CLUSTER = bool(os.environ.get("AEGIS_TEST_KUBECONFIG"))
emulator_only = pytest.mark.skipif(REAL_CLUSTER, reason="emulator-specific timing")


def assert_status_body(body: dict[str, Any], code: int, reason: str) -> None:
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["metadata"] == {}
    assert body["status"] == "Failure"
    assert body["reason"] == reason
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]


# ---------------------------------------------------------------------------- discovery


def test_discovery_of_core_groups_and_crds(k8s_api: Any, widget_crd: str) -> None:
    api = raw(k8s_api, "GET", "/api")
    assert api.status == 200 and "v1" in api.body["versions"]

    core = raw(k8s_api, "GET", "/api/v1").body
    assert core["groupVersion"] == "v1"
    core_names = {r["name"] for r in core["resources"]}
    assert {"namespaces", "configmaps", "secrets", "events", "pods"} <= core_names

    groups = {g["name"]: g for g in raw(k8s_api, "GET", "/apis").body["groups"]}
    assert {"apps", "batch", "coordination.k8s.io", "events.k8s.io",
            "apiextensions.k8s.io", "dr.aegis.dev", GROUP} <= set(groups)
    assert groups["apps"]["preferredVersion"]["groupVersion"] == "apps/v1"
    assert raw(k8s_api, "GET", "/apis/batch").body["kind"] == "APIGroup"

    aegis = raw(k8s_api, "GET", "/apis/dr.aegis.dev/v1alpha1").body
    by_name = {r["name"]: r for r in aegis["resources"]}
    policies = by_name["backuppolicies"]
    assert policies["kind"] == "BackupPolicy" and policies["namespaced"] is True
    assert "bp" in policies["shortNames"] and "dr" in policies["categories"]
    assert {"get", "list", "watch", "create", "patch", "update", "delete"} <= set(
        policies["verbs"])
    assert "backuppolicies/status" in by_name

    for group_version in ("apps/v1", "batch/v1", "coordination.k8s.io/v1", "events.k8s.io/v1"):
        assert raw(k8s_api, "GET", f"/apis/{group_version}").body["groupVersion"] == (
            group_version)
    assert raw(k8s_api, "GET", "/version").body["gitVersion"].startswith("v1.")
    assert raw(k8s_api, "GET", "/apis/nonexistent.example/v1").status == 404


# ---------------------------------------------------------------------------- metadata


def test_create_sets_server_metadata_and_answers_201(widgets: WidgetApi,
                                                     k8s_api: Any) -> None:
    response = raw(k8s_api, "POST", widgets.path(), widget("alpha"))
    assert response.status == 201
    meta = response.body["metadata"]
    assert meta["namespace"] == widgets.namespace  # taken from the URL
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert meta["generation"] == 1
    assert response.body["kind"] == "Widget" and response.body["apiVersion"] == (
        f"{GROUP}/{VERSION}")
    fetched = widgets.get("alpha")
    assert fetched["metadata"]["uid"] == meta["uid"]
    assert raw(k8s_api, "GET", widgets.path("alpha")).status == 200


def test_resource_version_changes_on_every_write_and_generation_on_spec_only(
        widgets: WidgetApi) -> None:
    created = widgets.create(widget("beta"))
    rv0 = created["metadata"]["resourceVersion"]

    labelled = widgets.patch("beta", {"metadata": {"labels": {"team": "db"}}})
    assert labelled["metadata"]["resourceVersion"] != rv0
    assert labelled["metadata"]["generation"] == 1  # metadata is not spec

    status = widgets.patch_status("beta", {"status": {"phase": "Running"}})
    assert status["metadata"]["resourceVersion"] != labelled["metadata"]["resourceVersion"]
    assert status["metadata"]["generation"] == 1  # status is not spec

    respec = widgets.patch("beta", {"spec": {"size": 5}})
    assert respec["metadata"]["generation"] == 2
    rvs = {rv0, labelled["metadata"]["resourceVersion"], status["metadata"]["resourceVersion"],
           respec["metadata"]["resourceVersion"]}
    assert len(rvs) == 4

    same = widgets.patch("beta", {"spec": {"size": 5}})  # no change: no new version
    assert same["metadata"]["resourceVersion"] == respec["metadata"]["resourceVersion"]


def test_stale_resource_version_is_a_conflict(widgets: WidgetApi, k8s_api: Any) -> None:
    created = widgets.create(widget("gamma"))
    stale = dict(created)
    widgets.patch("gamma", {"spec": {"size": 4}})

    stale_put = raw(k8s_api, "PUT", widgets.path("gamma"), {**stale, "spec": {
        "size": 9, "mode": "Slow"}})
    assert stale_put.status == 409
    assert_status_body(stale_put.body, 409, "Conflict")
    assert stale_put.body["details"]["name"] == "gamma"
    assert stale_put.body["details"]["group"] == GROUP
    assert stale_put.body["details"]["kind"] == PLURAL

    stale_patch = raw(k8s_api, "PATCH", widgets.path("gamma"),
                      {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                       "spec": {"size": 8}},
                      headers={"Content-Type": "application/merge-patch+json"})
    assert stale_patch.status == 409

    # kopf's optimistic lock: a JSON patch that tests the resourceVersion first.
    stale_test = raw(k8s_api, "PATCH", widgets.path("gamma"), [
        {"op": "test", "path": "/metadata/resourceVersion",
         "value": created["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/spec/size", "value": 7}],
        headers={"Content-Type": "application/json-patch+json"})
    assert stale_test.status == 422
    assert widgets.get("gamma")["spec"]["size"] == 4

    fresh = widgets.get("gamma")
    fresh["spec"]["size"] = 6
    replaced = raw(k8s_api, "PUT", widgets.path("gamma"), fresh)
    assert replaced.status == 200 and replaced.body["spec"]["size"] == 6


def test_duplicate_create_and_missing_object_errors(widgets: WidgetApi, k8s_api: Any) -> None:
    widgets.create(widget("delta"))
    duplicate = raw(k8s_api, "POST", widgets.path(), widget("delta"))
    assert duplicate.status == 409
    assert_status_body(duplicate.body, 409, "AlreadyExists")
    assert duplicate.body["details"] == {"name": "delta", "group": GROUP, "kind": PLURAL}

    missing = raw(k8s_api, "GET", widgets.path("nope"))
    assert missing.status == 404
    assert_status_body(missing.body, 404, "NotFound")
    assert missing.body["details"]["name"] == "nope"
    assert missing.body["details"]["kind"] == PLURAL
    assert raw(k8s_api, "DELETE", widgets.path("nope")).status == 404

    no_namespace = raw(k8s_api, "POST", f"/api/v1/namespaces/{widgets.namespace}-absent/"
                                        "configmaps",
                       {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert no_namespace.status == 404


# ---------------------------------------------------------------------------- schema


def test_schema_defaults_and_pruning(widgets: WidgetApi) -> None:
    created = widgets.create(widget("eps", nested={"host": "h"}, bogus="dropped",
                                    extra={"anything": {"goes": [1, 2]}}))
    spec = created["spec"]
    assert spec["color"] == "blue"  # default
    assert spec["nested"] == {"host": "h", "port": 80}  # nested default
    assert "bogus" not in spec  # unknown field pruned
    assert spec["extra"] == {"anything": {"goes": [1, 2]}}  # preserve-unknown-fields
    assert widgets.get("eps")["spec"] == spec


@pytest.mark.parametrize(("spec", "field", "reason"), [
    ({"mode": "Fast"}, "spec.size", "FieldValueRequired"),
    ({"size": "three", "mode": "Fast"}, "spec.size", "FieldValueTypeInvalid"),
    ({"size": 11, "mode": "Fast"}, "spec.size", "FieldValueInvalid"),
    ({"size": 0, "mode": "Fast"}, "spec.size", "FieldValueInvalid"),
    ({"size": 1, "mode": "Medium"}, "spec.mode", "FieldValueNotSupported"),
    ({"size": 1, "mode": "Fast", "name": "ab"}, "spec.name", "FieldValueInvalid"),
    ({"size": 1, "mode": "Fast", "name": "abcdefghi"}, "spec.name", "FieldValueTooLong"),
    ({"size": 1, "mode": "Fast", "name": "abc1"}, "spec.name", "FieldValueInvalid"),
    ({"size": 1, "mode": "Fast", "tags": []}, "spec.tags", "FieldValueInvalid"),
    ({"size": 1, "mode": "Fast", "tags": ["a", "b", "c", "d"]}, "spec.tags",
     "FieldValueTooMany"),
    ({"size": 1, "mode": "Fast", "nested": {"port": 1}}, "spec.nested.host",
     "FieldValueRequired"),
    ({"size": 1, "mode": "Fast", "items": [{"name": "a"}, {"value": 2}]}, "spec.items[1].name",
     "FieldValueRequired"),
    ({"size": 1, "mode": "Fast", "items": [{"name": "a", "value": "x"}]},
     "spec.items[0].value", "FieldValueTypeInvalid"),
    ({"size": 1, "mode": "Fast", "choice": {"a": "1", "b": "2"}}, "spec.choice",
     "FieldValueInvalid"),
])
def test_schema_violations_are_422_invalid_with_causes(
        widgets: WidgetApi, k8s_api: Any, spec: dict[str, Any], field: str, reason: str) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget",
            "metadata": {"name": "bad"}, "spec": spec}
    response = raw(k8s_api, "POST", widgets.path(), body)
    assert response.status == 422
    assert_status_body(response.body, 422, "Invalid")
    details = response.body["details"]
    assert details["name"] == "bad" and details["group"] == GROUP and details["kind"] == "Widget"
    causes = {(c["field"], c["reason"]) for c in details["causes"]}
    assert (field, reason) in causes, causes


def test_invalid_update_is_refused_and_leaves_the_object(widgets: WidgetApi,
                                                         k8s_api: Any) -> None:
    widgets.create(widget("zeta"))
    response = raw(k8s_api, "PATCH", widgets.path("zeta"), {"spec": {"mode": "Warp"}},
                   headers={"Content-Type": "application/merge-patch+json"})
    assert response.status == 422
    assert widgets.get("zeta")["spec"]["mode"] == "Fast"


def test_aegis_crd_rejects_an_invalid_backup_policy(k8s_api: Any, namespace: str) -> None:
    body = backup_policy("broken")
    body["spec"]["concurrencyPolicy"] = "Sometimes"
    del body["spec"]["storage"]
    response = raw(k8s_api, "POST", f"/apis/dr.aegis.dev/v1alpha1/namespaces/{namespace}/"
                                    "backuppolicies", body)
    assert response.status == 422
    fields = {c["field"] for c in response.body["details"]["causes"]}
    assert {"spec.concurrencyPolicy", "spec.storage"} <= fields


# ---------------------------------------------------------------------------- subresources


def test_status_subresource_separates_spec_and_status(widgets: WidgetApi,
                                                      k8s_api: Any) -> None:
    created = widgets.create({**widget("eta"), "status": {"phase": "Injected"}})
    assert "status" not in created or created["status"] == {}

    current = widgets.get("eta")
    current["spec"]["size"] = 2
    current["status"] = {"phase": "Sneaky"}
    replaced = raw(k8s_api, "PUT", widgets.path("eta"), current).body
    assert replaced["spec"]["size"] == 2
    assert replaced.get("status", {}).get("phase") != "Sneaky"

    status_put = widgets.get("eta")
    status_put["spec"]["size"] = 9
    status_put["metadata"].setdefault("labels", {})["sneaky"] = "yes"
    status_put["status"] = {"phase": "Ready", "conditions": [{"type": "Ready",
                                                              "status": "True"}]}
    after = raw(k8s_api, "PUT", widgets.path("eta", "status"), status_put).body
    assert after["status"]["phase"] == "Ready"
    assert after["spec"]["size"] == 2  # /status ignores spec
    assert "sneaky" not in (after["metadata"].get("labels") or {})  # ... and metadata


def test_builtin_kinds_with_status_ignore_status_on_the_main_endpoint(
        k8s_api: Any, namespace: str) -> None:
    batch = client.BatchV1Api(k8s_api)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j1"},
           "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}},
           "status": {"succeeded": 5}}
    created = raw(k8s_api, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    assert created.status == 201
    assert (created.body.get("status") or {}).get("succeeded") is None
    status = batch.patch_namespaced_job_status("j1", namespace, {"status": {"active": 0}})
    assert status.metadata.name == "j1"


# ---------------------------------------------------------------------------- patch flavours


def test_patch_flavours(widgets: WidgetApi, k8s_api: Any, namespace: str) -> None:
    widgets.create(widget("theta", tags=["a"], items=[{"name": "x", "value": 1}]))
    merged = raw(k8s_api, "PATCH", widgets.path("theta"),
                 {"spec": {"tags": ["b", "c"], "color": None}},
                 headers={"Content-Type": "application/merge-patch+json"}).body
    assert merged["spec"]["tags"] == ["b", "c"]  # lists are replaced by merge patch

    json_patched = raw(k8s_api, "PATCH", widgets.path("theta"), [
        {"op": "add", "path": "/spec/tags/-", "value": "d"},
        {"op": "replace", "path": "/spec/size", "value": 7}],
        headers={"Content-Type": "application/json-patch+json"}).body
    assert json_patched["spec"]["tags"] == ["b", "c", "d"] and json_patched["spec"]["size"] == 7

    strategic_cr = raw(k8s_api, "PATCH", widgets.path("theta"), {"spec": {"size": 1}},
                       headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert strategic_cr.status == 415  # CRs have no strategic merge, as in the real server

    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                     {"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
                     {"name": "sidecar", "image": "envoy:1"}]}}}})
    strategic = raw(k8s_api, "PATCH", f"/apis/apps/v1/namespaces/{namespace}/deployments/web",
                    {"spec": {"template": {"spec": {"containers": [
                        {"name": "app", "image": "nginx:2",
                         "env": [{"name": "B", "value": "2"}]}]}}}},
                    headers={"Content-Type": "application/strategic-merge-patch+json"}).body
    containers = {c["name"]: c for c in strategic["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"app", "sidecar"}  # merged by name, sidecar kept
    assert containers["app"]["image"] == "nginx:2"
    assert {e["name"] for e in containers["app"]["env"]} == {"A", "B"}
    assert strategic["metadata"]["generation"] == 2


# ---------------------------------------------------------------------------- deletion


def test_finalizers_hold_deletion_until_removed(widgets: WidgetApi, k8s_api: Any) -> None:
    widgets.create({**widget("iota"), "metadata": {"name": "iota",
                                                    "finalizers": ["contract.aegis.dev/hold"]}})
    widgets.delete("iota")
    held = widgets.get("iota")
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["contract.aegis.dev/hold"]

    added = raw(k8s_api, "PATCH", widgets.path("iota"),
                {"metadata": {"finalizers": ["contract.aegis.dev/hold", "x.example/new"]}},
                headers={"Content-Type": "application/merge-patch+json"})
    assert added.status == 422  # no new finalizers once deletion started

    widgets.patch("iota", {"metadata": {"finalizers": None}})
    wait_for(lambda: widgets.gone("iota"), what="iota removed")

    widgets.create(widget("kappa"))
    widgets.delete("kappa")
    assert widgets.gone("kappa")  # no finalizers: removed at once


def _owned_configmap(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": name, "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]},
        "data": {"k": "v"}}


def _configmap_gone(core: client.CoreV1Api, name: str, namespace: str) -> bool:
    try:
        core.read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_cascading_deletion_through_owner_references(
        widgets: WidgetApi, core: client.CoreV1Api, namespace: str) -> None:
    owner = widgets.create(widget("lambda"))
    core.create_namespaced_config_map(namespace, _owned_configmap("child", owner))
    widgets.delete("lambda")
    wait_for(lambda: _configmap_gone(core, "child", namespace), what="child collected")

    held = widgets.create({**widget("mu"), "metadata": {
        "name": "mu", "finalizers": ["contract.aegis.dev/hold"]}})
    core.create_namespaced_config_map(namespace, _owned_configmap("child2", held))
    widgets.delete("mu")
    time.sleep(1.0)  # background GC waits for the owner to be really gone
    assert not _configmap_gone(core, "child2", namespace)
    widgets.patch("mu", {"metadata": {"finalizers": None}})
    wait_for(lambda: _configmap_gone(core, "child2", namespace), what="child2 collected")


def test_orphan_propagation_keeps_dependents(widgets: WidgetApi, core: client.CoreV1Api,
                                             namespace: str) -> None:
    owner = widgets.create(widget("nu"))
    core.create_namespaced_config_map(namespace, _owned_configmap("orphan", owner))
    widgets.delete("nu", propagation_policy="Orphan")
    wait_for(lambda: widgets.gone("nu"), what="owner removed")
    wait_for(lambda: not core.read_namespaced_config_map("orphan", namespace)
             .metadata.owner_references, what="owner reference dropped")
    assert core.read_namespaced_config_map("orphan", namespace).data == {"k": "v"}


# ---------------------------------------------------------------------------- lists


def test_label_and_field_selectors(core: client.CoreV1Api, namespace: str,
                                   k8s_api: Any) -> None:
    for name, labels in [("a", {"tier": "db", "env": "prod"}), ("b", {"tier": "cache"}),
                         ("c", {"tier": "web", "env": "dev"}), ("d", {})]:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name,
                                                                   "labels": labels}})

    def names(label: str = "", field: str = "") -> list[str]:
        items = core.list_namespaced_config_map(namespace, label_selector=label,
                                                field_selector=field).items
        return sorted(i.metadata.name for i in items if i.metadata.name in "abcd")

    assert names("tier=db") == ["a"]
    assert names("tier==cache") == ["b"]
    assert names("tier!=db") == ["b", "c", "d"]
    assert names("tier in (db,web)") == ["a", "c"]
    assert names("tier notin (db,web)") == ["b", "d"]
    assert names("env") == ["a", "c"]
    assert names("!env") == ["b", "d"]
    assert names("tier in (db,web),env=dev") == ["c"]
    assert names(field="metadata.name=b") == ["b"]
    assert names(field="metadata.name!=b") == ["a", "c", "d"]
    assert names(field=f"metadata.namespace={namespace}") == ["a", "b", "c", "d"]

    listing = raw(k8s_api, "GET", f"/api/v1/namespaces/{namespace}/configmaps").body
    assert listing["kind"] == "ConfigMapList" and listing["apiVersion"] == "v1"
    assert listing["metadata"]["resourceVersion"]
    bad = raw(k8s_api, "GET", f"/api/v1/namespaces/{namespace}/configmaps",
              query={"fieldSelector": "data.k=v"})
    assert bad.status == 400


def test_custom_resource_list_and_pagination(widgets: WidgetApi, k8s_api: Any) -> None:
    for name in ("p1", "p2", "p3"):
        widgets.create(widget(name))
    first = raw(k8s_api, "GET", widgets.path(), query={"limit": "2"}).body
    assert first["kind"] == "WidgetList" and first["apiVersion"] == f"{GROUP}/{VERSION}"
    assert len(first["items"]) == 2 and first["metadata"]["continue"]
    rest = raw(k8s_api, "GET", widgets.path(), query={
        "limit": "2", "continue": first["metadata"]["continue"]}).body
    assert sorted(i["metadata"]["name"] for i in first["items"] + rest["items"]) == [
        "p1", "p2", "p3"]


# ---------------------------------------------------------------------------- watch


def test_watch_from_resource_version_streams_changes_in_order(
        widgets: WidgetApi, k8s_api: Any) -> None:
    widgets.create(widget("before"))
    since = raw(k8s_api, "GET", widgets.path()).body["metadata"]["resourceVersion"]
    widgets.create(widget("w1"))
    widgets.patch("w1", {"spec": {"size": 2}})
    widgets.delete("w1")
    events, _ = watch_events(k8s_api, widgets.path(), {"resourceVersion": since},
                             until=lambda ev: any(e["type"] == "DELETED" for e in ev))
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events
            if e["type"] != "BOOKMARK"]
    assert seen == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events
           if e["type"] != "BOOKMARK"]
    assert rvs == sorted(rvs) and int(since) < rvs[0]


def test_watch_without_resource_version_starts_with_current_state(
        widgets: WidgetApi, k8s_api: Any) -> None:
    widgets.create(widget("s1"))
    widgets.create(widget("s2"))
    events, _ = watch_events(k8s_api, widgets.path(), {},
                             until=lambda ev: len(ev) >= 2)
    assert {(e["type"], e["object"]["metadata"]["name"]) for e in events[:2]} == {
        ("ADDED", "s1"), ("ADDED", "s2")}


def test_watch_timeout_seconds_closes_the_stream(widgets: WidgetApi, k8s_api: Any) -> None:
    events, seconds = watch_events(k8s_api, widgets.path(), {"timeoutSeconds": "1"},
                                   timeout=30)
    assert seconds < 15
    assert all(e["type"] in ("ADDED", "BOOKMARK") for e in events)


def test_watch_label_selector_filters_and_reports_transitions(
        widgets: WidgetApi, k8s_api: Any) -> None:
    since = raw(k8s_api, "GET", widgets.path()).body["metadata"]["resourceVersion"]
    widgets.create({**widget("l1"), "metadata": {"name": "l1", "labels": {"pick": "no"}}})
    widgets.create({**widget("l2"), "metadata": {"name": "l2", "labels": {"pick": "yes"}}})
    widgets.patch("l2", {"metadata": {"labels": {"pick": "no"}}})
    events, _ = watch_events(k8s_api, widgets.path(),
                             {"resourceVersion": since, "labelSelector": "pick=yes"},
                             until=lambda ev: any(e["type"] == "DELETED" for e in ev))
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events
            if e["type"] != "BOOKMARK"]
    assert seen == [("ADDED", "l2"), ("DELETED", "l2")]


def test_watch_initial_events_end_with_a_bookmark(widgets: WidgetApi, k8s_api: Any) -> None:
    widgets.create(widget("b1"))
    events, _ = watch_events(
        k8s_api, widgets.path(),
        {"allowWatchBookmarks": "true", "sendInitialEvents": "true",
         "resourceVersionMatch": "NotOlderThan"},
        until=lambda ev: any(e["type"] == "BOOKMARK" for e in ev))
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert bookmark["object"]["metadata"]["resourceVersion"]
    assert bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
    assert ("ADDED", "b1") in [(e["type"], e["object"]["metadata"].get("name"))
                               for e in events]


@emulator_only
def test_watch_sends_periodic_bookmarks(widgets: WidgetApi, k8s_api: Any) -> None:
    k8s_api.server.call(setattr, k8s_api.server.handler, "bookmark_interval", 0.2)
    try:
        since = raw(k8s_api, "GET", widgets.path()).body["metadata"]["resourceVersion"]
        events, _ = watch_events(k8s_api, widgets.path(), {
            "resourceVersion": since, "allowWatchBookmarks": "true", "timeoutSeconds": "3"},
            until=lambda ev: sum(e["type"] == "BOOKMARK" for e in ev) >= 2)
    finally:
        k8s_api.server.call(setattr, k8s_api.server.handler, "bookmark_interval", 5.0)
    assert sum(e["type"] == "BOOKMARK" for e in events) >= 2


@emulator_only
def test_watch_from_a_compacted_version_is_410_gone(widgets: WidgetApi, k8s_api: Any) -> None:
    store = k8s_api.server.handler.store
    k8s_api.server.call(store._compacted.__setitem__, (GROUP, PLURAL), 10**9)
    try:
        events, _ = watch_events(k8s_api, widgets.path(), {"resourceVersion": "1"})
    finally:
        k8s_api.server.call(store._compacted.__setitem__, (GROUP, PLURAL), 0)
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


# ---------------------------------------------------------------------------- namespaces


def test_namespaces_and_their_deletion(core: client.CoreV1Api, k8s_api: Any) -> None:
    name = f"contract-ns-{os.urandom(4).hex()}"
    created = raw(k8s_api, "POST", "/api/v1/namespaces",
                  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert created.status == 201
    assert core.read_namespace(name).status.phase == "Active"
    assert name in {n.metadata.name for n in core.list_namespace().items}
    core.create_namespaced_config_map(name, {"metadata": {"name": "inside"}})
    core.delete_namespace(name)
    wait_for(lambda: _configmap_gone(core, "inside", name), what="content removed", timeout=60)

    def namespace_gone() -> bool:
        try:
            return core.read_namespace(name).status.phase == "Terminating" and False
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise

    wait_for(namespace_gone, what="namespace removed", timeout=90)


# ---------------------------------------------------------------------------- events


def test_events_are_stored_and_selectable_by_involved_object(
        core: client.CoreV1Api, namespace: str, k8s_api: Any) -> None:
    for target in ("one", "two"):
        core.create_namespaced_event(namespace, {
            "metadata": {"generateName": f"{target}-"},
            "involvedObject": {"kind": "Widget", "name": target, "namespace": namespace,
                               "apiVersion": f"{GROUP}/{VERSION}"},
            "reason": "Tested", "message": f"about {target}", "type": "Normal",
            "source": {"component": "contract"},
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:00Z",
            "count": 1})
    found = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=one,involvedObject.kind=Widget").items
    assert [e.message for e in found] == ["about one"]

    events_v1 = client.EventsV1Api(k8s_api)
    events_v1.create_namespaced_event(namespace, {
        "metadata": {"name": "modern"}, "eventTime": "2024-01-01T00:00:00.000000Z",
        "reportingController": "contract.aegis.dev/test", "reportingInstance": "contract-1",
        "action": "Test", "reason": "Tested", "type": "Normal", "note": "modern event",
        "regarding": {"kind": "Widget", "name": "one", "namespace": namespace}})
    assert events_v1.read_namespaced_event("modern", namespace).note == "modern event"


# ---------------------------------------------------------------------------- tables


def test_table_printing_uses_printer_columns(widgets: WidgetApi, k8s_api: Any) -> None:
    widgets.create(widget("tab", size=4, mode="Slow"))
    widgets.patch_status("tab", {"status": {"conditions": [
        {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}})
    table = raw(k8s_api, "GET", widgets.path(), headers={
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}).body
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", "Size", "Mode", "Ready", "Age"]
    row = next(r for r in table["rows"] if r["cells"][0] == "tab")
    assert row["cells"][1:4] == [4, "Slow", "True"]
    assert row["object"]["metadata"]["name"] == "tab"


# ---------------------------------------------------------------------------- kubectl


def test_kubectl_get_describe_apply_patch_delete(kubectl: Any, namespace: str,
                                                 k8s_api: Any) -> None:
    custom = client.CustomObjectsApi(k8s_api)
    custom.create_namespaced_custom_object("dr.aegis.dev", "v1alpha1", namespace,
                                           "recoverypoints", {
        "apiVersion": "dr.aegis.dev/v1alpha1", "kind": "RecoveryPoint",
        "metadata": {"name": "nightly-1"}, "spec": {"policyRef": {"name": "nightly"}}})
    applied = kubectl("apply", "--validate=false", "-n", namespace, "-f", "-",
                      input=backup_policy("nightly"), check=True)
    assert "backuppolicy.dr.aegis.dev/nightly created" in applied.stdout

    listed = kubectl("get", "bp", "-n", namespace, check=True).stdout
    assert listed.split()[:8] == ["NAME", "SCHEDULE", "SUSPENDED", "LAST", "SUCCESS", "NEXT",
                                  "RPO", "READY"]
    assert "nightly" in listed and "0 2 * * *" in listed

    across = kubectl("get", "dr", "-A", check=True).stdout
    assert f"{namespace}" in across
    assert "backuppolicy.dr.aegis.dev/nightly" in across
    assert "recoverypoint.dr.aegis.dev/nightly-1" in across

    as_yaml = kubectl("get", "bp", "nightly", "-n", namespace, "-o", "yaml", check=True).stdout
    assert "kubectl.kubernetes.io/last-applied-configuration" in as_yaml
    assert "timeZone: UTC" in as_yaml  # server-side default

    changed = backup_policy("nightly")
    changed["spec"]["schedule"] = "30 3 * * *"
    reapplied = kubectl("apply", "--validate=false", "-n", namespace, "-f", "-",
                        input=changed, check=True)
    assert "configured" in reapplied.stdout
    assert custom.get_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, "backuppolicies", "nightly")["spec"][
        "schedule"] == "30 3 * * *"

    kubectl("patch", "bp", "nightly", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"suspend":true}}', check=True)
    kubectl("patch", "bp", "nightly", "-n", namespace, "--type=json",
            "-p", '[{"op":"replace","path":"/spec/jitterSeconds","value":30}]', check=True)
    spec = custom.get_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, "backuppolicies", "nightly")["spec"]
    assert spec["suspend"] is True and spec["jitterSeconds"] == 30

    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_event(namespace, {
        "metadata": {"generateName": "nightly-"},
        "involvedObject": {"kind": "BackupPolicy", "name": "nightly", "namespace": namespace,
                           "apiVersion": "dr.aegis.dev/v1alpha1",
                           "uid": custom.get_namespaced_custom_object(
                               "dr.aegis.dev", "v1alpha1", namespace, "backuppolicies",
                               "nightly")["metadata"]["uid"]},
        "reason": "Accepted", "message": "the policy is valid", "type": "Normal",
        "source": {"component": "aegis"}, "count": 1,
        "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:00Z"})
    described = kubectl("describe", "bp", "nightly", "-n", namespace, check=True).stdout
    assert "Name:         nightly" in described
    assert "Accepted" in described and "the policy is valid" in described

    kubectl("apply", "--validate=false", "-n", namespace, "-f", "-", check=True, input={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
        "data": {"a": "1"}})
    kubectl("patch", "configmap", "settings", "-n", namespace, "-p", '{"data":{"b":"2"}}',
            check=True)  # strategic merge, kubectl's default
    assert core.read_namespaced_config_map("settings", namespace).data == {"a": "1", "b": "2"}

    deleted = kubectl("delete", "bp", "nightly", "-n", namespace, check=True)
    assert 'backuppolicy.dr.aegis.dev "nightly" deleted' in deleted.stdout
    missing = kubectl("get", "bp", "nightly", "-n", namespace)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_kubectl_wait_for_condition_and_delete(kubectl: Any, widgets: WidgetApi,
                                               k8s_api: Any) -> None:
    widgets.create({**widget("waiter"), "metadata": {
        "name": "waiter", "finalizers": ["contract.aegis.dev/hold"]}})

    def later(action: Any) -> threading.Timer:
        timer = threading.Timer(1.0, action)
        timer.start()
        return timer

    later(lambda: widgets.patch_status("waiter", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "Done"}]}}))
    ready = kubectl("wait", f"{PLURAL}.{GROUP}/waiter", "-n", widgets.namespace,
                    "--for=condition=Ready", "--timeout=30s")
    assert ready.returncode == 0, ready.stderr
    assert "condition met" in ready.stdout

    widgets.delete("waiter")
    later(lambda: widgets.patch("waiter", {"metadata": {"finalizers": None}}))
    gone = kubectl("wait", f"{PLURAL}.{GROUP}/waiter", "-n", widgets.namespace,
                   "--for=delete", "--timeout=30s")
    assert gone.returncode == 0, gone.stderr
    assert widgets.gone("waiter")

    table = kubectl("get", "wdg", "-n", widgets.namespace)
    assert table.returncode == 0


def test_secret_string_data_is_folded_into_data(k8s_api: Any, namespace: str) -> None:
    import base64

    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "mixed"},
        "data": {"a": base64.b64encode(b"from-data").decode(),
                 "b": base64.b64encode(b"overridden").decode()},
        "stringData": {"b": "from-string-data", "c": "plain"},
    })
    secret = core.read_namespaced_secret("mixed", namespace)
    assert secret.string_data is None
    decoded = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert decoded == {"a": "from-data", "b": "from-string-data", "c": "plain"}
    core.patch_namespaced_secret("mixed", namespace, {"stringData": {"a": "patched"}})
    patched = core.read_namespaced_secret("mixed", namespace)
    assert base64.b64decode(patched.data["a"]) == b"patched"
    assert patched.string_data is None
