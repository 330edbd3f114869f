"""The strictness of kube-apiserver Aegis relies on (issue 10, point 2 and point 5):
fieldValidation, int64 integers, dryRun, the events.k8s.io/v1 view of core Events, Job and Pod
validation, the default ServiceAccount, and CEL messages read first. Every test runs unchanged
on the emulator and on a real cluster (AEGIS_TEST_KUBECONFIG).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.contract.helpers import (
    WidgetApi,
    backup_policy,
    raw,
    raw_bytes,
    wait_for,
    watch_events,
    widget,
)


def _status(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def _warnings(headers: dict[str, str]) -> str:
    return " ".join(v for k, v in headers.items() if k.lower() == "warning")


# ---------------------------------------------------------------------------- fieldValidation


def test_strict_field_validation_refuses_unknown_fields_of_a_custom_resource(
        k8s_api: Any, widgets: WidgetApi) -> None:
    body = widget("strict")
    body["spec"]["bogus"] = 1
    body["spec"]["nested"] = {"host": "h", "typo": True}
    answer = raw(k8s_api, "POST", widgets.path(), body, query={"fieldValidation": "Strict"})
    assert answer.status == 400, answer.body
    assert answer.body["reason"] == "BadRequest"
    message = answer.body["message"]
    assert "strict decoding error: " in message
    assert 'unknown field "spec.bogus"' in message
    assert 'unknown field "spec.nested.typo"' in message
    assert widgets.gone("strict")


def test_warn_is_the_default_and_drops_unknown_fields_with_a_warning_header(
        k8s_api: Any, widgets: WidgetApi) -> None:
    body = widget("warned")
    body["spec"]["bogus"] = 1
    answer = raw(k8s_api, "POST", widgets.path(), body)  # no fieldValidation: Warn
    assert answer.status == 201, answer.body
    assert "bogus" not in answer.body["spec"]
    assert 'unknown field \\"spec.bogus\\"' in _warnings(answer.headers)

    body = widget("warned-explicitly")
    body["spec"]["other"] = "x"
    answer = raw(k8s_api, "POST", widgets.path(), body, query={"fieldValidation": "Warn"})
    assert answer.status == 201 and "other" not in widgets.get("warned-explicitly")["spec"]
    assert 'unknown field \\"spec.other\\"' in _warnings(answer.headers)


def test_ignore_drops_unknown_fields_silently(k8s_api: Any, widgets: WidgetApi) -> None:
    body = widget("ignored")
    body["spec"]["bogus"] = 1
    answer = raw(k8s_api, "POST", widgets.path(), body, query={"fieldValidation": "Ignore"})
    assert answer.status == 201
    assert "bogus" not in widgets.get("ignored")["spec"]
    assert "unknown field" not in _warnings(answer.headers)


def test_strict_applies_to_merge_patches_and_leaves_the_object_unchanged(
        k8s_api: Any, widgets: WidgetApi) -> None:
    widgets.create(widget("patched"))
    answer = raw(k8s_api, "PATCH", widgets.path("patched"), {"spec": {"size": 4, "typo": 1}},
                 query={"fieldValidation": "Strict"},
                 headers={"Content-Type": "application/merge-patch+json"})
    assert answer.status == 400, answer.body
    assert 'unknown field "spec.typo"' in answer.body["message"]
    assert widgets.get("patched")["spec"]["size"] == 3
    # Metadata writes such as kopf's annotations and finalizers pass Strict.
    answer = raw(k8s_api, "PATCH", widgets.path("patched"),
                 {"metadata": {"annotations": {"kopf.zalando.org/last-handled": "{}"},
                               "finalizers": ["dr.aegis.dev/finalizer"]}},
                 query={"fieldValidation": "Strict"},
                 headers={"Content-Type": "application/merge-patch+json"})
    assert answer.status == 200, answer.body
    widgets.patch("patched", {"metadata": {"finalizers": None}})


def test_strict_field_validation_of_built_in_kinds(k8s_api: Any, namespace: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "bogus": 1},
              "stringData": {"a": "b"}, "extra": "x"}
    answer = raw(k8s_api, "POST", f"/api/v1/namespaces/{namespace}/secrets", secret,
                 query={"fieldValidation": "Strict"})
    assert answer.status == 400, answer.body
    assert answer.body["message"].startswith(
        'Secret in version "v1" cannot be handled as a Secret: strict decoding error: ')
    assert 'unknown field "extra"' in answer.body["message"]
    assert 'unknown field "metadata.bogus"' in answer.body["message"]

    job = _job("strict-job")
    job["spec"]["template"]["spec"]["containers"][0]["imagee"] = "typo"
    job["spec"]["retries"] = 3
    answer = raw(k8s_api, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job,
                 query={"fieldValidation": "Strict"})
    assert answer.status == 400, answer.body
    assert 'unknown field "spec.retries"' in answer.body["message"]
    assert 'unknown field "spec.template.spec.containers[0].imagee"' in answer.body["message"]

    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
              "data": {"k": "v"}, "dataa": {"k": "v"}}
    answer = raw(k8s_api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", config)
    assert answer.status == 201 and "dataa" not in answer.body
    assert 'unknown field \\"dataa\\"' in _warnings(answer.headers)


def test_duplicate_fields_are_refused_by_strict(k8s_api: Any, namespace: str) -> None:
    text = ('{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup"},'
            ' "data": {"k": "1", "k": "2"}}')
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    answer = raw_bytes(k8s_api, "POST", path, text.encode(), query={"fieldValidation": "Strict"})
    assert answer.status == 400, answer.body
    assert 'duplicate field "data.k"' in answer.body["message"]
    answer = raw_bytes(k8s_api, "POST", path, text.encode())
    assert answer.status == 201 and answer.body["data"] == {"k": "2"}
    assert 'duplicate field \\"data.k\\"' in _warnings(answer.headers)


DEPLOYMENT_WITH_PROBLEMS = """{"apiVersion": "apps/v1", "kind": "Deployment",
 "metadata": {"name": "dup-deploy", "name": "dup-deploy", "unknownMeta": "x"},
 "spec": {"unknown1": "v", "paused": true, "paused": false, "replicas": 0,
  "selector": {"matchLabels": {"app": "a"}},
  "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [
   {"name": "c", "image": "busybox:1.36", "unknownNested": "v",
    "imagePullPolicy": "Always", "imagePullPolicy": "Never"}]}}}}"""


def test_strict_problems_are_listed_in_the_real_servers_order(k8s_api: Any,
                                                              namespace: str) -> None:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    answer = raw_bytes(k8s_api, "POST", path, DEPLOYMENT_WITH_PROBLEMS.encode(),
                       query={"fieldValidation": "Strict"})
    assert answer.status == 400, answer.body
    assert answer.body["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: '
        'duplicate field "metadata.name", unknown field "metadata.unknownMeta", '
        'unknown field "spec.unknown1", duplicate field "spec.paused", '
        'unknown field "spec.template.spec.containers[0].unknownNested", '
        'duplicate field "spec.template.spec.containers[0].imagePullPolicy"')

    valid = json.loads(DEPLOYMENT_WITH_PROBLEMS)  # the last duplicate wins, unknowns dropped
    created = raw(k8s_api, "POST", path, valid, query={"fieldValidation": "Ignore"})
    assert created.status == 201, created.body
    assert created.body["spec"]["paused"] is False
    patch = ('{"spec": {"unknown1": "v", "paused": true, "paused": false, "template": {"spec": '
             '{"containers": [{"name": "c", "image": "busybox:1.36", "unknownNested": "v", '
             '"imagePullPolicy": "Always", "imagePullPolicy": "Never"}]}}}}')
    answer = raw_bytes(k8s_api, "PATCH", f"{path}/dup-deploy", patch.encode(),
                       query={"fieldValidation": "Strict"},
                       content_type="application/merge-patch+json")
    assert answer.status == 400, answer.body
    assert answer.body["message"].endswith(
        'strict decoding error: duplicate field "spec.paused", '
        'duplicate field "spec.template.spec.containers[0].imagePullPolicy", '
        'unknown field "spec.template.spec.containers[0].unknownNested", '
        'unknown field "spec.unknown1"')


def test_an_unsupported_field_validation_value_is_refused(k8s_api: Any,
                                                         widgets: WidgetApi) -> None:
    answer = raw(k8s_api, "POST", widgets.path(), widget("odd"),
                 query={"fieldValidation": "Loose"})
    assert answer.status == 422, answer.body
    assert answer.body["message"].startswith('CreateOptions.meta.k8s.io "" is invalid: '
                                             'fieldValidation: Unsupported value: "Loose"')


# ---------------------------------------------------------------------------- integers


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_integers_outside_int64_are_refused(widgets: WidgetApi, value: int) -> None:
    body = widget(f"big-{uuid.uuid4().hex[:6]}", items=[{"name": "a", "value": value}])
    with pytest.raises(ApiException) as caught:
        widgets.create(body)
    assert caught.value.status == 422
    message = _status(caught.value)["message"]
    assert 'spec.items[0].value: Invalid value: "number": spec.items[0].value in body must be ' \
           'of type integer: "number"' in message


def test_a_float_with_a_fraction_is_not_an_integer(widgets: WidgetApi) -> None:
    with pytest.raises(ApiException) as caught:
        widgets.create(widget("fraction", items=[{"name": "a", "value": 1.5}]))
    assert caught.value.status == 422
    assert 'must be of type integer: "number"' in _status(caught.value)["message"]


def test_int64_bounds_are_accepted(widgets: WidgetApi) -> None:
    body = widget("int64", items=[{"name": "a", "value": 2**63 - 1},
                                  {"name": "b", "value": -(2**63)}])
    created = widgets.create(body)
    assert [i["value"] for i in created["spec"]["items"]] == [2**63 - 1, -(2**63)]


# ---------------------------------------------------------------------------- dryRun


def test_dry_run_create_validates_answers_and_stores_nothing(
        k8s_api: Any, widgets: WidgetApi) -> None:
    before = raw(k8s_api, "GET", widgets.path()).body["metadata"]["resourceVersion"]
    answer = raw(k8s_api, "POST", widgets.path(), widget("dry"), query={"dryRun": "All"})
    assert answer.status == 201, answer.body
    assert answer.body["metadata"]["name"] == "dry" and answer.body["metadata"]["uid"]
    assert answer.body["spec"]["color"] == "blue"  # defaulted as if stored
    assert widgets.gone("dry")
    events, _ = watch_events(k8s_api, widgets.path(),
                             {"resourceVersion": before, "timeoutSeconds": "1"})
    assert [e for e in events if e["type"] != "BOOKMARK"] == []

    invalid = widget("dry-invalid", size=99)
    answer = raw(k8s_api, "POST", widgets.path(), invalid, query={"dryRun": "All"})
    assert answer.status == 422


def test_dry_run_of_the_scale_subresource_answers_and_scales_nothing(
        k8s_api: Any, namespace: str) -> None:
    # Failover drills rehearse a plan's scale step this way: the answer must carry the
    # asked replicas while the Deployment keeps its own (kube-apiserver honours dryRun on
    # subresources as on the object).
    apps = client.AppsV1Api(k8s_api)
    created = apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dry-scale"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "dry-scale"}},
                 "template": {"metadata": {"labels": {"app": "dry-scale"}},
                              "spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}}})
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/dry-scale/scale"
    answer = raw(k8s_api, "PATCH", path, {"spec": {"replicas": 3}}, query={"dryRun": "All"},
                 headers={"Content-Type": "application/merge-patch+json"})
    assert answer.status == 200, answer.body
    assert answer.body["spec"]["replicas"] == 3
    after = apps.read_namespaced_deployment("dry-scale", namespace)
    assert after.spec.replicas == 1
    assert after.metadata.resource_version == created.metadata.resource_version
    assert after.metadata.generation == created.metadata.generation


def test_dry_run_update_patch_and_delete_change_nothing(k8s_api: Any,
                                                       widgets: WidgetApi) -> None:
    created = widgets.create(widget("dry-up"))
    rv = created["metadata"]["resourceVersion"]
    answer = raw(k8s_api, "PATCH", widgets.path("dry-up"), {"spec": {"size": 5}},
                 query={"dryRun": "All"},
                 headers={"Content-Type": "application/merge-patch+json"})
    assert answer.status == 200 and answer.body["spec"]["size"] == 5
    assert answer.body["metadata"]["resourceVersion"] == rv
    body = widgets.get("dry-up")
    body["spec"]["size"] = 6
    answer = raw(k8s_api, "PUT", widgets.path("dry-up"), body, query={"dryRun": "All"})
    assert answer.status == 200 and answer.body["spec"]["size"] == 6
    answer = raw(k8s_api, "DELETE", widgets.path("dry-up"), query={"dryRun": "All"})
    assert answer.status == 200
    stored = widgets.get("dry-up")
    assert stored["spec"]["size"] == 3 and stored["metadata"]["resourceVersion"] == rv
    events, _ = watch_events(k8s_api, widgets.path(),
                             {"resourceVersion": rv, "timeoutSeconds": "1"})
    assert [e for e in events if e["type"] != "BOOKMARK"] == []


def test_an_invalid_dry_run_value_is_refused(k8s_api: Any, widgets: WidgetApi) -> None:
    answer = raw(k8s_api, "POST", widgets.path(), widget("dry-odd"), query={"dryRun": "Yes"})
    assert answer.status == 422, answer.body
    assert answer.body["message"] == (
        'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Yes"}: '
        'supported values: "All"')
    assert widgets.gone("dry-odd")


# ---------------------------------------------------------------------------- events


def test_core_events_are_seen_through_events_k8s_io(k8s_api: Any, namespace: str,
                                                   core: client.CoreV1Api) -> None:
    core.create_namespaced_event(namespace, {
        "metadata": {"name": "ev1"},
        "involvedObject": {"kind": "ConfigMap", "name": "cm", "namespace": namespace,
                           "apiVersion": "v1"},
        "reason": "Tested", "message": "hello", "type": "Warning", "count": 2,
        "source": {"component": "aegis"}, "reportingComponent": "aegis-operator",
        "reportingInstance": "aegis-0",
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z",
    })
    path = f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    seen = raw(k8s_api, "GET", f"{path}/ev1").body
    assert seen["apiVersion"] == "events.k8s.io/v1"
    assert seen["note"] == "hello" and seen["reason"] == "Tested" and seen["type"] == "Warning"
    assert seen["regarding"]["name"] == "cm" and seen["regarding"]["kind"] == "ConfigMap"
    assert seen["reportingController"] == "aegis-operator"
    assert seen["reportingInstance"] == "aegis-0"
    assert seen["deprecatedCount"] == 2
    assert seen["deprecatedSource"] == {"component": "aegis"}
    assert seen["deprecatedFirstTimestamp"] == "2026-01-01T00:00:00Z"
    assert "message" not in seen and "involvedObject" not in seen
    table = raw(k8s_api, "GET", f"{path}/ev1",
                headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).body
    assert table["kind"] == "Table"
    assert {"hello", "Tested", "configmap/cm"} <= set(table["rows"][0]["cells"])
    listed = raw(k8s_api, "GET", path, query={"fieldSelector": "regarding.name=cm"}).body
    assert [e["metadata"]["name"] for e in listed["items"]] == ["ev1"]
    assert raw(k8s_api, "GET", path, query={"fieldSelector": "regarding.name=other"}
               ).body["items"] == []
    events, _ = watch_events(k8s_api, path, {"timeoutSeconds": "1"},
                             until=lambda evs: any(e["type"] == "ADDED" for e in evs))
    added = [e["object"] for e in events if e["type"] == "ADDED"]
    assert added and added[0]["note"] == "hello"


def test_events_k8s_io_creates_are_core_events(k8s_api: Any, namespace: str,
                                              core: client.CoreV1Api) -> None:
    path = f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    body = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "ev2"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "aegis.dev/op",
            "reportingInstance": "aegis-0", "action": "Reconcile", "reason": "Done",
            "type": "Normal", "note": "finished",
            "regarding": {"kind": "Pod", "name": "p", "namespace": namespace,
                          "apiVersion": "v1"}}
    answer = raw(k8s_api, "POST", path, body)
    assert answer.status == 201, answer.body
    event = core.read_namespaced_event("ev2", namespace)
    assert event.message == "finished" and event.reason == "Done"
    assert event.involved_object.name == "p"
    assert event.reporting_component == "aegis.dev/op"
    incomplete = {k: v for k, v in body.items() if k != "reportingController"}
    incomplete["metadata"] = {"name": "ev3"}
    assert raw(k8s_api, "POST", path, incomplete).status == 422


def test_an_event_about_another_namespaces_object_is_refused(core: client.CoreV1Api,
                                                             namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_event(namespace, {
            "metadata": {"name": "leak"},
            "involvedObject": {"kind": "Deployment", "name": "coredns",
                               "namespace": "kube-system", "apiVersion": "apps/v1"},
            "reason": "Scaled", "message": "scaled to 0", "type": "Normal"})
    assert caught.value.status == 422
    assert _status(caught.value)["message"] == (
        'Event "leak" is invalid: involvedObject.namespace: Invalid value: "kube-system": '
        "does not match event.namespace")


# ---------------------------------------------------------------------------- Jobs and Pods


def _job(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": False,
                "containers": [{"name": "agent", "image": "busybox:1.36",
                                "command": ["true"],
                                "env": [{"name": "A", "value": "1"}],
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                "volumes": [{"name": "tmp", "emptyDir": {}}]}}, **spec}}


def _refusal(batch: client.BatchV1Api, namespace: str, job: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job(namespace, job)
    assert caught.value.status in (400, 422), caught.value.body
    message: str = _status(caught.value)["message"]
    return message


def test_a_valid_job_gets_the_generated_selector_and_labels(k8s_api: Any,
                                                           namespace: str) -> None:
    batch = client.BatchV1Api(k8s_api)
    job = batch.create_namespaced_job(namespace, _job("ok", ttlSecondsAfterFinished=0))
    uid = job.metadata.uid
    assert job.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    labels = job.spec.template.metadata.labels
    assert labels["batch.kubernetes.io/controller-uid"] == uid
    assert labels["controller-uid"] == uid
    assert labels["batch.kubernetes.io/job-name"] == "ok" and labels["job-name"] == "ok"
    assert job.spec.backoff_limit == 0 and job.spec.completions == 1
    body = _job("six")
    del body["spec"]["backoffLimit"]
    assert batch.create_namespaced_job(namespace, body).spec.backoff_limit == 6


def test_invalid_jobs_are_refused_with_the_real_messages(k8s_api: Any, namespace: str) -> None:
    batch = client.BatchV1Api(k8s_api)

    job = _job("always")
    job["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert ('spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: '
            '"OnFailure", "Never"') in _refusal(batch, namespace, job)

    job = _job("defaulted-policy")
    del job["spec"]["template"]["spec"]["restartPolicy"]
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Always"' in _refusal(
        batch, namespace, job)

    job = _job("empty")
    job["spec"]["template"]["spec"]["containers"] = []
    assert "spec.template.spec.containers: Required value" in _refusal(batch, namespace, job)

    job = _job("noimage")
    del job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "spec.template.spec.containers[0].image: Required value" in _refusal(
        batch, namespace, job)

    job = _job("noname")
    del job["spec"]["template"]["spec"]["containers"][0]["name"]
    assert "spec.template.spec.containers[0].name: Required value" in _refusal(
        batch, namespace, job)

    job = _job("badenv")
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A=B", "value": "x"}]
    assert 'spec.template.spec.containers[0].env[0].name: Invalid value: "A=B"' in _refusal(
        batch, namespace, job)

    job = _job("nomount")
    job["spec"]["template"]["spec"]["volumes"] = []
    assert ('spec.template.spec.containers[0].volumeMounts[0].name: Not found: "tmp"'
            in _refusal(batch, namespace, job))

    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        job = _job(f"negative-{key.lower()}", **{key: -1})
        assert f"spec.{key}: Invalid value: -1: must be greater than or equal to 0" in (
            _refusal(batch, namespace, job))

    job = _job("badquantity")
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"memory": "lots"}}
    assert "quantities must match the regular expression" in _refusal(batch, namespace, job)

    job = _job("selector")
    job["spec"]["selector"] = {"matchLabels": {"app": "x"}}
    job["spec"]["template"]["metadata"] = {"labels": {"app": "x"}}
    assert "`selector` not auto-generated" in _refusal(batch, namespace, job)

    assert batch.list_namespaced_job(namespace).items == []


def test_a_jobs_template_and_selector_are_immutable(k8s_api: Any, namespace: str) -> None:
    batch = client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(namespace, _job("fixed"))
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job("fixed", namespace, {"spec": {"template": {"spec": {
            "containers": [{"name": "agent", "image": "busybox:1.37"}]}}}})
    assert caught.value.status == 422
    assert "spec.template: Invalid value: " in _status(caught.value)["message"]
    assert "field is immutable" in _status(caught.value)["message"]
    labelled = batch.patch_namespaced_job("fixed", namespace,
                                          {"metadata": {"labels": {"tier": "backup"}}})
    assert labelled.metadata.labels["tier"] == "backup"


# ---------------------------------------------------------------------------- ServiceAccounts


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "busybox:1.36"}], **spec}}


def test_every_namespace_has_a_default_service_account(core: client.CoreV1Api,
                                                       namespace: str) -> None:
    account = wait_for(lambda: core.read_namespaced_service_account("default", namespace),
                       what="the default ServiceAccount")
    assert account.metadata.name == "default"


def test_pods_get_the_default_account_and_its_token_volume(core: client.CoreV1Api,
                                                           namespace: str) -> None:
    wait_for(lambda: core.read_namespaced_service_account("default", namespace),
             what="the default ServiceAccount")
    pod = core.create_namespaced_pod(namespace, _pod("p1"))
    assert pod.spec.service_account_name == "default"
    (volume,) = [v for v in pod.spec.volumes if v.name.startswith("kube-api-access-")]
    sources = volume.projected.sources
    assert any(s.service_account_token and s.service_account_token.path == "token"
               for s in sources)
    mounts = pod.spec.containers[0].volume_mounts
    assert any(m.name == volume.name and m.read_only
               and m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"
               for m in mounts)

    quiet = core.create_namespaced_pod(namespace, _pod("p2", automountServiceAccountToken=False))
    assert not any(v.name.startswith("kube-api-access-") for v in quiet.spec.volumes or [])
    assert not quiet.spec.containers[0].volume_mounts


def test_a_pod_naming_a_missing_service_account_is_forbidden(core: client.CoreV1Api,
                                                             namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(namespace, _pod("p3", serviceAccountName="nobody"))
    assert caught.value.status == 403
    assert _status(caught.value)["message"] == (
        f'pods "p3" is forbidden: error looking up service account {namespace}/nobody: '
        'serviceaccount "nobody" not found')


def test_invalid_pods_are_refused(core: client.CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(namespace, _pod("p4", containers=[]))
    assert caught.value.status == 422
    assert "spec.containers: Required value" in _status(caught.value)["message"]


# ---------------------------------------------------------------------------- point 5


def test_a_cel_one_of_failure_is_the_only_message(k8s_api: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(k8s_api)
    body = backup_policy("two-sources")
    body["spec"]["source"]["redis"] = {"host": "cache.example"}
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object("dr.aegis.dev", "v1alpha1", namespace,
                                               "backuppolicies", body)
    assert caught.value.status == 422
    status = _status(caught.value)
    assert status["message"] == (
        'BackupPolicy.dr.aegis.dev "two-sources" is invalid: spec.source: Invalid value: '
        '"object": BackupSource: set exactly one of postgres, redis, command')
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.source"]


# ---------------------------------------------------------------------------- server-side apply

APPLY = "application/apply-patch+yaml"


def _apply(k8s_api: Any, path: str, body: Any, manager: str, **query: str) -> Any:
    text = body if isinstance(body, str) else json.dumps(body)
    return raw_bytes(k8s_api, "PATCH", path, text.encode(), content_type=APPLY,
                     query={"fieldManager": manager, **query})


def _managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e["fieldsV1"]
            for e in obj["metadata"].get("managedFields") or []}


def test_apply_creates_then_merges_and_records_managed_fields(k8s_api: Any,
                                                             widgets: WidgetApi) -> None:
    yaml_text = ("apiVersion: contract.aegis.dev/v1\nkind: Widget\nmetadata:\n  name: applied\n"
                 "  labels:\n    team: a\nspec:\n  size: 2\n  mode: Fast\n")
    answer = _apply(k8s_api, widgets.path("applied"), yaml_text, "argocd")
    assert answer.status == 201, answer.body
    assert answer.body["spec"]["size"] == 2 and answer.body["spec"]["color"] == "blue"
    fields = _managers(answer.body)[("argocd", "Apply")]
    assert "f:size" in fields["f:spec"] and "f:mode" in fields["f:spec"]
    assert "f:team" in fields["f:metadata"]["f:labels"]

    again = _apply(k8s_api, widgets.path("applied"), yaml_text, "argocd")
    assert again.status == 200
    assert again.body["metadata"]["resourceVersion"] == answer.body["metadata"][
        "resourceVersion"]  # applying the same configuration changes nothing

    # A second manager applies another field: both are kept, each owns its own.
    other = _apply(k8s_api, widgets.path("applied"), {
        "apiVersion": "contract.aegis.dev/v1", "kind": "Widget",
        "metadata": {"name": "applied"}, "spec": {"tags": ["x"]}}, "flux")
    assert other.status == 200, other.body
    assert other.body["spec"]["tags"] == ["x"] and other.body["spec"]["size"] == 2
    assert "f:tags" in _managers(other.body)[("flux", "Apply")]["f:spec"]

    # A field the manager stops applying is removed; labels it owns go too.
    smaller = _apply(k8s_api, widgets.path("applied"), {
        "apiVersion": "contract.aegis.dev/v1", "kind": "Widget",
        "metadata": {"name": "applied"}, "spec": {"size": 2, "mode": "Fast"}}, "argocd")
    assert smaller.status == 200
    assert "team" not in (smaller.body["metadata"].get("labels") or {})
    assert smaller.body["spec"]["tags"] == ["x"]


def test_apply_conflicts_with_another_manager_unless_forced(k8s_api: Any,
                                                           widgets: WidgetApi) -> None:
    config = {"apiVersion": "contract.aegis.dev/v1", "kind": "Widget",
              "metadata": {"name": "contested"}, "spec": {"size": 2, "mode": "Fast"}}
    assert _apply(k8s_api, widgets.path("contested"), config, "argocd").status == 201
    changed = {**config, "spec": {"size": 5, "mode": "Fast"}}
    answer = _apply(k8s_api, widgets.path("contested"), changed, "flux")
    assert answer.status == 409, answer.body
    assert answer.body["reason"] == "Conflict"
    assert answer.body["message"] == (
        'Apply failed with 1 conflict: conflict with "argocd": .spec.size')
    assert answer.body["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "argocd"',
         "field": ".spec.size"}]
    assert widgets.get("contested")["spec"]["size"] == 2

    # The same value is no conflict: ownership is shared.
    assert _apply(k8s_api, widgets.path("contested"), config, "flux").status == 200

    forced = _apply(k8s_api, widgets.path("contested"), changed, "flux", force="true")
    assert forced.status == 200, forced.body
    assert forced.body["spec"]["size"] == 5
    managers = _managers(forced.body)
    assert "f:size" in managers[("flux", "Apply")]["f:spec"]
    assert "f:size" not in managers[("argocd", "Apply")].get("f:spec", {})


def test_apply_conflicts_with_an_update_manager(k8s_api: Any, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    created = raw(k8s_api, "POST", path, {"metadata": {"name": "cm"}, "data": {"k": "v"}},
                  query={"fieldManager": "operator"})
    assert created.status == 201
    entry = created.body["metadata"]["managedFields"][0]
    assert entry["manager"] == "operator" and entry["operation"] == "Update"
    assert "f:k" in entry["fieldsV1"]["f:data"]
    answer = _apply(k8s_api, f"{path}/cm", {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"name": "cm"}, "data": {"k": "w"}},
                    "gitops")
    assert answer.status == 409
    assert answer.body["message"].startswith(
        'Apply failed with 1 conflict: conflict with "operator" using v1 at ')
    assert answer.body["message"].endswith(": .data.k")


def test_apply_of_secrets_and_its_option_checks(k8s_api: Any, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/secrets/creds"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"password": "hunter2"}}
    answer = _apply(k8s_api, path, secret, "argocd")
    assert answer.status == 201, answer.body
    assert answer.body["data"]["password"] == "aHVudGVyMg=="
    missing_manager = raw_bytes(k8s_api, "PATCH", path, json.dumps(secret).encode(),
                                content_type=APPLY)
    assert missing_manager.status == 422
    assert "fieldManager: Required value: is required for apply patch" in (
        missing_manager.body["message"])
    forced_merge = raw(k8s_api, "PATCH", path, {"data": {}}, query={"force": "true"},
                       headers={"Content-Type": "application/merge-patch+json"})
    assert forced_merge.status == 422
    assert "force: Forbidden: may not be specified for non-apply patch" in (
        forced_merge.body["message"])


def test_kubectl_server_side_apply_of_an_aegis_object(kubectl: Any, namespace: str) -> None:
    policy = backup_policy("gitops")
    applied = kubectl("apply", "--server-side", "--validate=false", "--field-manager=argocd",
                      "-n", namespace, "-f", "-", input=policy)
    assert applied.returncode == 0, applied.stderr
    assert "serverside-applied" in applied.stdout
    policy["spec"]["schedule"] = "0 3 * * *"
    contested = kubectl("apply", "--server-side", "--validate=false", "--field-manager=flux",
                        "-n", namespace, "-f", "-", input=policy)
    assert contested.returncode != 0
    assert 'conflict with "argocd"' in contested.stderr and ".spec.schedule" in contested.stderr
    forced = kubectl("apply", "--server-side", "--validate=false", "--field-manager=flux",
                     "--force-conflicts", "-n", namespace, "-f", "-", input=policy)
    assert forced.returncode == 0, forced.stderr
    shown = kubectl("get", "bp", "gitops", "-n", namespace, "-o",
                    "jsonpath={.spec.schedule}", check=True).stdout
    assert shown == "0 3 * * *"


def test_apply_merges_keyed_lists_by_their_merge_key(k8s_api: Any, namespace: str) -> None:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/keyed"
    base = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "keyed"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "k"}},
                     "template": {"metadata": {"labels": {"app": "k"}}, "spec": {
                         "containers": [{"name": "a", "image": "busybox:1.36",
                                         "env": [{"name": "X", "value": "1"}]}]}}}}
    assert _apply(k8s_api, path, base, "team-a").status == 201
    sidecar_env = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "keyed"},
                   "spec": {"template": {"spec": {"containers": [
                       {"name": "a", "env": [{"name": "Y", "value": "2"}]}]}}}}
    merged = _apply(k8s_api, path, sidecar_env, "team-b")
    assert merged.status == 200, merged.body
    (container,) = merged.body["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "busybox:1.36"
    assert [e["name"] for e in container["env"]] == ["X", "Y"]

    without_x = json.loads(json.dumps(base))
    del without_x["spec"]["template"]["spec"]["containers"][0]["env"]
    after = _apply(k8s_api, path, without_x, "team-a")
    assert after.status == 200, after.body
    (container,) = after.body["spec"]["template"]["spec"]["containers"]
    assert [e["name"] for e in container["env"]] == ["Y"]
