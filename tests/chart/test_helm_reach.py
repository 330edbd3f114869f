"""The chart values that open reach outside a tenant's namespace (docs/tenancy.md): closed
by default, passed to the operator as AEGIS_* variables, and the RBAC that goes with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

Render = Callable[..., list[dict[str, Any]]]
Helm = Callable[..., Any]


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_every_reach_is_closed_by_default(render: Render) -> None:
    values = env(render(None))
    assert values["AEGIS_REACHABLE_NAMESPACES"] == ""
    assert values["AEGIS_ALLOWED_JOB_IMAGES"] == ""
    assert values["AEGIS_ALLOWED_SERVICE_ACCOUNTS"] == ""
    assert values["AEGIS_ALLOW_PRIVATE_ENDPOINTS"] == "true"
    assert values["AEGIS_ALLOW_LOOPBACK_ENDPOINTS"] == "false"


def test_reach_values_reach_the_operator(render: Render) -> None:
    values = env(render(
        None,
        "--set", "failover.reachableNamespaces={ingress,dns}",
        "--set", "jobs.allowedImages={registry.example.com/dr/*,busybox:1.36}",
        "--set", "jobs.allowedServiceAccounts={backup-irsa}",
        "--set", "endpoints.allowPrivate=false",
        "--set", "endpoints.allowLoopback=true",
    ))
    assert values["AEGIS_REACHABLE_NAMESPACES"] == "ingress,dns"
    assert values["AEGIS_ALLOWED_JOB_IMAGES"] == "registry.example.com/dr/*,busybox:1.36"
    assert values["AEGIS_ALLOWED_SERVICE_ACCOUNTS"] == "backup-irsa"
    assert values["AEGIS_ALLOW_PRIVATE_ENDPOINTS"] == "false"
    assert values["AEGIS_ALLOW_LOOPBACK_ENDPOINTS"] == "true"


def test_namespaced_mode_grants_only_workload_calls_in_reachable_namespaces(
    render: Render,
) -> None:
    docs = render(None, "--set", "watchNamespaces={shop}",
                  "--set", "failover.reachableNamespaces={shop,ingress}")
    reach = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-reach")]
    assert [r["metadata"]["namespace"] for r in reach] == ["ingress"]  # shop has its Role
    resources = {res for rule in reach[0]["rules"] for res in rule["resources"]}
    assert resources == {"deployments", "statefulsets", "deployments/scale", "statefulsets/scale"}
    assert {v for rule in reach[0]["rules"] for v in rule["verbs"]} == {"get", "patch"}
    bindings = [d for d in docs if d["kind"] == "RoleBinding"
                and d["metadata"]["namespace"] == "ingress"]
    assert bindings[0]["roleRef"]["name"] == reach[0]["metadata"]["name"]
    assert not [d for d in render(None) if d["metadata"]["name"].endswith("-reach")]


def test_every_namespace_needs_cluster_mode(
    helm: Helm, template_args: Callable[..., list[str]]
) -> None:
    result = helm(*template_args(None, "--set", "watchNamespaces={shop}",
                                 "--set", "failover.reachableNamespaces={*}"))
    assert result.returncode != 0
    assert "needs watchNamespaces empty" in result.stderr


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("failover.reachableNamespaces[0]=Kube_System", "failover.reachableNamespaces"),
        ("jobs.allowedImages[0]=a b", "jobs.allowedImages"),
        ("jobs.allowedServiceAccounts[0]=Admin", "jobs.allowedServiceAccounts"),
        ("endpoints.allowLoopback=maybe", "endpoints.allowLoopback"),
        ("endpoints.allowMetadata=true", "endpoints"),
    ],
)
def test_the_schema_refuses_bad_reach_values(
    helm: Helm, template_args: Callable[..., list[str]], flag: str, field: str
) -> None:
    result = helm(*template_args(None, "--set", flag))
    assert result.returncode != 0, f"--set {flag} was accepted"
    assert field in result.stderr, result.stderr
