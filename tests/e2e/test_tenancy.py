"""Tenancy end to end: the real operator against the emulator refuses FailoverPlans that
reach into another namespace, touches nothing there, and writes nothing read there into the
plan's status or events. (The refusal of metadata addresses is tested as pure validation in
tests/unit/test_tenancy.py: no test sends traffic off loopback.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client
from tests.e2e.helpers import OperatorHandle, condition, create, events_for, get, wait_for

from aegis.reconcilers.failover import FAILOVER
from aegis.sandbox.pytest_fixtures import unique_namespace_name

PLURAL = "failoverplans"


@pytest.fixture
def healthy_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def other_namespace(k8s_api: Any) -> Iterator[str]:
    """Another tenant's namespace, holding a ready Deployment `dns` with 2 replicas."""
    core, apps = client.CoreV1Api(k8s_api), client.AppsV1Api(k8s_api)
    name = unique_namespace_name("victim")
    core.create_namespace({"metadata": {"name": name}})
    labels = {"app": "dns"}
    apps.create_namespaced_deployment(name, {
        "metadata": {"name": "dns"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "dns", "image": "coredns/coredns"}]}}},
    })
    apps.patch_namespaced_deployment_status("dns", name, {"status": {
        "observedGeneration": 1, "replicas": 2, "readyReplicas": 2}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def site(name: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "checks": checks, "periodSeconds": 1, "timeoutSeconds": 1,
            "failureThreshold": 1}


def plan(k8s_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    create(k8s_api, PLURAL, namespace, {
        "kind": "FailoverPlan", "metadata": {"name": name},
        "spec": {"mode": "Automatic", "cooldownSeconds": 0, **spec},
    })


def ready_of(k8s_api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    found = condition(get(k8s_api, PLURAL, namespace, name), "Ready")
    return found if found and found["status"] == "False" else None


def test_a_cross_namespace_scale_step_is_refused_and_never_executed(
    aegis_operator: OperatorHandle, k8s_api: Any, namespace: str, other_namespace: str,
    healthy_url: str,
) -> None:
    http = {"name": "web", "http": {"url": healthy_url}}
    # The plan from the incident: forced failover whose step scales another tenant's DNS.
    plan(k8s_api, namespace, "grab", {
        "primary": site("a", [http]), "secondary": site("b", [http]),
        "steps": [{"name": "noop", "webhook": {"url": healthy_url}},
                  {"name": "take-dns", "scale": {
                      "kind": "Deployment", "name": "dns", "namespace": other_namespace,
                      "replicas": 0, "waitReady": False}}],
    })
    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object(
        "dr.aegis.dev", "v1alpha1", namespace, PLURAL, "grab",
        {"metadata": {"annotations": {FAILOVER: "forced by the tenant"}}})
    # A valid plan in the same namespace, as the yardstick of "the operator has had its turn".
    plan(k8s_api, namespace, "control", {
        "primary": site("a", [http]), "secondary": site("b", [http]),
        "steps": [{"name": "noop", "webhook": {"url": healthy_url}}],
    })

    refused = wait_for("the plan refused", lambda: ready_of(k8s_api, namespace, "grab"))
    assert refused["reason"] == "NamespaceNotAllowed"
    assert refused["message"].startswith("spec.steps[1].scale.namespace: ")
    assert "AEGIS_REACHABLE_NAMESPACES" in refused["message"]
    assert "failover.reachableNamespaces" in refused["message"]
    warning = wait_for("the Warning event", lambda: [
        e for e in events_for(k8s_api, namespace, "grab") if e["reason"] == "NamespaceNotAllowed"])
    assert warning[0]["type"] == "Warning"

    # The control plan is probed twice while the refused one is left alone.
    def probed_twice() -> bool:
        sites = (get(k8s_api, PLURAL, namespace, "control").get("status") or {}).get("sites")
        return bool(sites) and sites["primary"].get("consecutiveSuccesses", 0) >= 2
    wait_for("the control plan probed", probed_twice)

    grab = get(k8s_api, PLURAL, namespace, "grab")
    assert "state" not in grab["status"] and "lastTransition" not in grab["status"]
    assert FAILOVER in grab["metadata"]["annotations"]  # never consumed: nothing was started
    dns = client.AppsV1Api(k8s_api).read_namespaced_deployment("dns", other_namespace)
    assert dns.spec.replicas == 2 and dns.metadata.generation == 1


def test_a_cross_namespace_workload_check_does_not_echo_the_other_workload(
    aegis_operator: OperatorHandle, k8s_api: Any, namespace: str, other_namespace: str,
    healthy_url: str,
) -> None:
    peek = {"name": "peek", "workload": {"kind": "Deployment", "name": "dns",
                                         "namespace": other_namespace, "minReady": 1}}
    http = {"name": "web", "http": {"url": healthy_url}}
    plan(k8s_api, namespace, "peek", {
        "mode": "Manual", "primary": site("a", [peek]), "secondary": site("b", [http]),
        "steps": [{"name": "noop", "webhook": {"url": healthy_url}}],
    })
    plan(k8s_api, namespace, "control", {
        "mode": "Manual", "primary": site("a", [http]), "secondary": site("b", [http]),
        "steps": [{"name": "noop", "webhook": {"url": healthy_url}}],
    })
    refused = wait_for("the plan refused", lambda: ready_of(k8s_api, namespace, "peek"))
    assert refused["reason"] == "NamespaceNotAllowed"
    assert refused["message"].startswith("spec.primary.checks[0].workload.namespace: ")
    wait_for("the control plan probed", lambda: (
        get(k8s_api, PLURAL, namespace, "control").get("status") or {}).get("sites"))

    peeked = get(k8s_api, PLURAL, namespace, "peek")
    shown = json.dumps(peeked["status"]) + json.dumps(events_for(k8s_api, namespace, "peek"))
    assert "sites" not in peeked["status"]
    # The check would have said "Deployment <ns>/dns: 2/2 ready": nothing of it shows.
    assert f"{other_namespace}/dns" not in shown and "2/2" not in shown
