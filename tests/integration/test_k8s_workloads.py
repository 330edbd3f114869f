"""The Kubernetes-backed ports of the failover code (aegis.k8s.workloads) against the API
emulator: Secrets, workload replicas through the scale subresource, Jobs owned by the plan.
The emulator has no Deployment controller, so a test thread plays it by writing status."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from aegis.api.common import SecretKeyRef, SecretRef
from aegis.api.failoverplan import JobStep, ScaleStep, Transition
from aegis.k8s import client as aegis_client
from aegis.k8s import objects
from aegis.k8s.workloads import PLAN_LABEL, PlanJobs, SecretsOfNamespace, Workloads
from aegis.sandbox.jobrunner import JobRunner
from aegis.steps.base import StepContext
from aegis.steps.job import job_name, run_job
from aegis.steps.scale import run_scale

GROUP, VERSION = "dr.aegis.dev", "v1alpha1"


@pytest.fixture(autouse=True)
def our_client(k8s_api: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """aegis.k8s.client reads KUBECONFIG when first used: point it at the emulator."""
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))
    aegis_client.reset()
    yield
    aegis_client.reset()


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}}},
    }


def statefulset(name: str, replicas: int) -> dict[str, Any]:
    body = deployment(name, replicas)
    body["kind"] = "StatefulSet"
    body["spec"]["serviceName"] = name
    return body


def play_controller(api: client.AppsV1Api, namespace: str, name: str, ready: int,
                    stop: threading.Event) -> None:
    """What the Deployment controller would do: observe the generation, bring up pods."""
    while not stop.is_set():
        dep = api.read_namespaced_deployment(name, namespace)
        wanted = dep.spec.replicas
        status = {"observedGeneration": dep.metadata.generation, "replicas": wanted,
                  "readyReplicas": min(wanted, ready)}
        api.patch_namespaced_deployment_status(name, namespace, {"status": status})
        stop.wait(0.1)


def context(namespace: str, timeout: float, transition_id: str = "failover-1") -> StepContext:
    transition = Transition(kind="Failover", id=transition_id)
    return StepContext(plan="orders", namespace=namespace, step="warm", transition=transition,
                       from_site="eu", to_site="us", deadline=time.monotonic() + timeout)


def test_secrets_are_read_from_the_plan_namespace_with_errors_naming_the_key(
    k8s_api: Any, namespace: str
) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_secret(namespace, {
        "metadata": {"name": "hook"},
        "data": {"Authorization": base64.b64encode(b"Bearer s3cr3t").decode()}})
    reader = SecretsOfNamespace(namespace)
    assert reader.value(SecretKeyRef(name="hook", key="Authorization")) == "Bearer s3cr3t"
    assert reader.data(SecretRef(name="hook")) == {"Authorization": "Bearer s3cr3t"}
    with pytest.raises(KeyError) as missing_key:
        reader.value(SecretKeyRef(name="hook", key="token"))
    assert "hook" in str(missing_key.value) and "'token'" in str(missing_key.value)
    assert "s3cr3t" not in str(missing_key.value)
    with pytest.raises(objects.NotFound, match=r"Secret .*/absent not found"):
        reader.data(SecretRef(name="absent"))


def test_replicas_are_read_and_set_through_the_scale_subresource(
    k8s_api: Any, namespace: str
) -> None:
    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, deployment("web", 1))
    apps.create_namespaced_stateful_set(namespace, statefulset("db", 2))
    workloads = Workloads()
    before = workloads.read_replicas("Deployment", namespace, "web")
    assert (before.desired, before.ready, before.current) == (1, 0, 0)
    assert before.generation == 1 and before.observed_generation == 0

    workloads.set_replicas("Deployment", namespace, "web", 4)
    workloads.set_replicas("StatefulSet", namespace, "db", 3)
    after = workloads.read_replicas("Deployment", namespace, "web")
    assert after.desired == 4 and after.generation == 2
    assert apps.read_namespaced_stateful_set("db", namespace).spec.replicas == 3
    assert workloads.read_replicas("StatefulSet", namespace, "db").desired == 3

    with pytest.raises(objects.NotFound, match=r"Deployment .*/nope not found"):
        workloads.read_replicas("Deployment", namespace, "nope")
    with pytest.raises(objects.NotFound):
        workloads.set_replicas("StatefulSet", namespace, "nope", 1)


def test_a_dry_run_of_scaling_is_validated_and_answered_but_stores_nothing(
    k8s_api: Any, namespace: str
) -> None:
    """What a failover drill's scale step sends (dryRun=All on the scale subresource)."""
    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, deployment("web", 1))
    apps.create_namespaced_stateful_set(namespace, statefulset("db", 2))
    before = apps.read_namespaced_deployment("web", namespace).metadata.resource_version
    workloads = Workloads()
    assert workloads.dry_run_replicas("Deployment", namespace, "web", 5) == 5
    assert workloads.dry_run_replicas("StatefulSet", namespace, "db", 0) == 0
    web = apps.read_namespaced_deployment("web", namespace)
    assert web.spec.replicas == 1 and web.metadata.resource_version == before
    assert apps.read_namespaced_stateful_set("db", namespace).spec.replicas == 2
    with pytest.raises(client.ApiException) as invalid:
        workloads.dry_run_replicas("Deployment", namespace, "web", -1)
    assert invalid.value.status == 422
    with pytest.raises(client.ApiException) as missing:
        workloads.dry_run_replicas("Deployment", namespace, "nope", 1)
    assert missing.value.status == 404
    with pytest.raises(PermissionError):
        Workloads("home").dry_run_replicas("Deployment", namespace, "web", 2)


def test_scale_step_waits_for_the_controller_to_report_ready_replicas(
    k8s_api: Any, namespace: str
) -> None:
    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(namespace, deployment("warm", 0))
    stop = threading.Event()
    controller = threading.Thread(
        target=play_controller, args=(client.AppsV1Api(k8s_api.new_client()),
                                      namespace, "warm", 3, stop), daemon=True)
    controller.start()
    try:
        step = ScaleStep(kind="Deployment", name="warm", replicas=3)
        result = run_scale(step, context(namespace, 10), Workloads())
        assert result.ok, result.message
        assert result.outputs["previousReplicas"] == "0"
        assert result.message.endswith("3/3 ready")
        assert apps.read_namespaced_deployment("warm", namespace).spec.replicas == 3

        # a controller that never brings the pods up: the step fails at its timeout
        short = ScaleStep(kind="Deployment", name="warm", replicas=5)
        started = time.monotonic()
        late = run_scale(short, context(namespace, 1.0), Workloads())
        assert not late.ok and "3/5 ready" in late.message
        assert 0.9 <= time.monotonic() - started < 3
    finally:
        stop.set()
        controller.join(5)


def plan_owner(k8s_api: Any, namespace: str) -> dict[str, Any]:
    check = [{"name": "api", "tcp": {"host": "127.0.0.1", "port": 9}}]
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FailoverPlan",
            "metadata": {"name": "orders"},
            "spec": {"primary": {"name": "eu", "checks": check},
                     "secondary": {"name": "us", "checks": check},
                     "steps": [{"name": "n", "webhook": {"url": "http://127.0.0.1:9/"}}]}}
    owner: dict[str, Any] = client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "failoverplans", body)
    return owner


def test_job_is_created_once_owned_by_the_plan_and_its_state_read(
    k8s_api: Any, namespace: str
) -> None:
    owner = plan_owner(k8s_api, namespace)
    jobs = PlanJobs(owner, "failover-20240101000000")
    spec = {"template": {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "c", "image": "busybox", "command": ["true"]}]}}}
    jobs.ensure_job(namespace, "orders-warm-1", spec)
    jobs.ensure_job(namespace, "orders-warm-1", spec)  # a resumed step finds its Job
    batch = client.BatchV1Api(k8s_api)
    found = batch.list_namespaced_job(namespace).items
    assert [j.metadata.name for j in found] == ["orders-warm-1"]
    job = found[0]
    assert job.metadata.labels[PLAN_LABEL] == "orders"
    assert job.metadata.labels["dr.aegis.dev/transition"] == "failover-20240101000000"
    ref = job.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.uid) == ("FailoverPlan", "orders", owner["metadata"]["uid"])
    assert jobs.job_state(namespace, "orders-warm-1").phase == "Running"

    now = dt.datetime.now(dt.UTC).isoformat()
    batch.patch_namespaced_job_status("orders-warm-1", namespace, {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit", "lastTransitionTime": now,
         "lastProbeTime": now}]}})
    state = jobs.job_state(namespace, "orders-warm-1")
    assert state.phase == "Failed"
    assert state.message == "BackoffLimitExceeded: Job has reached the specified backoff limit"
    batch.delete_namespaced_job("orders-warm-1", namespace)
    gone = jobs.job_state(namespace, "orders-warm-1")
    assert gone.phase == "Failed" and "gone" in gone.message


def test_job_step_runs_a_job_to_completion(
    k8s_api: Any, namespace: str, job_runner: JobRunner
) -> None:
    owner = plan_owner(k8s_api, namespace)
    ok = JobStep(template={"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox", "command": ["sh", "-c", "echo warmed"]}]}}})
    result = run_job(ok, context(namespace, 30), PlanJobs(owner, "failover-1"))
    assert result.ok, result.message
    assert result.outputs["jobName"] == job_name("orders", "failover-1", "warm")

    failing = JobStep(template={"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox", "command": ["sh", "-c", "exit 3"]}]}}})
    result = run_job(failing, context(namespace, 30, "failover-2"), PlanJobs(owner, "failover-2"))
    assert not result.ok and "BackoffLimitExceeded" in result.message
