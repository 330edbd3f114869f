"""The real operator (kopf's KopfRunner, our handlers) against the emulator, with the Job
runner executing agent Jobs on this machine against real PostgreSQL, Redis and moto S3.

The operator runs as the chart's ServiceAccount, as after `helm install`: the chart's
ServiceAccount, ClusterRole and ClusterRoleBinding (default values: every namespace) are
rendered with the pinned helm and applied, a token is issued for the ServiceAccount
(TokenRequest) and the operator's kubeconfig carries that token. Tests, kubectl and the Job
runner stay admin. The emulator records what the operator used; `test_rbac_least_privilege`
(run last) compares it with what the chart grants.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.e2e.helpers import (
    DESELECTED_E2E,
    E2E_DIR,
    LEAST_PRIVILEGE_MODULE,
    OperatorHandle,
    OperatorIdentity,
    free_port,
    install_operator_identity,
)

from aegis import metrics
from aegis.k8s import client as aegis_client


@pytest.fixture(scope="session")
def operator_identity(
    k8s_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorIdentity]:
    """The chart's ServiceAccount with the chart's RBAC, and a kubeconfig with its token."""
    identity = install_operator_identity(k8s_api, tmp_path_factory.mktemp("operator"))
    yield identity
    docs = identity.documents
    if not getattr(k8s_api, "emulated", False):  # leave a real cluster as we found it
        rbac = client.RbacAuthorizationV1Api(k8s_api)
        for doc in docs:
            try:
                if doc["kind"] == "ClusterRole":
                    rbac.delete_cluster_role(doc["metadata"]["name"])
                elif doc["kind"] == "ClusterRoleBinding":
                    rbac.delete_cluster_role_binding(doc["metadata"]["name"])
            except ApiException:
                pass


def pytest_deselected(items: list[pytest.Item]) -> None:
    DESELECTED_E2E.extend(i.nodeid for i in items if Path(str(i.fspath)).parent == E2E_DIR)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The least-privilege check runs after every other test of the session."""
    last = [i for i in items if Path(str(i.fspath)).name == LEAST_PRIVILEGE_MODULE]
    if last:
        items[:] = [i for i in items if i not in last] + last


@pytest.fixture
def aegis_operator(
    k8s_api: Any, operator_identity: OperatorIdentity, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[OperatorHandle]:
    # prometheus-client serves /metrics once per process: every operator started in this
    # test process shares the first port.
    metrics_port = metrics.serve(free_port()) or free_port()
    env = {
        # The chart's ServiceAccount token, not the admin's credentials.
        "KUBECONFIG": str(operator_identity.kubeconfig),
        # The Job runner runs the Job's command on this machine: the agent of this checkout.
        "AEGIS_AGENT_COMMAND": f"{sys.executable} -m aegis agent",
        "AEGIS_METRICS_PORT": str(metrics_port),
        "AEGIS_HEALTH_PORT": "0",
        "AEGIS_LOG_FORMAT": "text",
        "AEGIS_CATALOG_SYNC_SECONDS": "5",
        # PostgreSQL, Redis, moto and the HTTP checks all listen on 127.0.0.1 here; a
        # cluster install keeps loopback closed (docs/tenancy.md).
        "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true",
        # The failover e2e runs a `job` step with busybox (the Job runner runs its command).
        "AEGIS_ALLOWED_JOB_IMAGES": "busybox",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    aegis_client.reset()
    handle = OperatorHandle(env, metrics_port).start()
    try:
        yield handle
    finally:
        handle.stop()
        aegis_client.reset()


PLURALS = {"BackupPolicy": "backuppolicies", "RecoveryPoint": "recoverypoints",
           "Restore": "restores", "FailoverPlan": "failoverplans", "DRDrill": "drdrills",
           "FailoverApproval": "failoverapprovals"}


@pytest.fixture(autouse=True)
def statuses_read_well_by_gitops_tools(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each e2e test (operator stopped, namespace not yet deleted), every Aegis object
    it produced is read as Flux/kstatus and Argo CD read it: the kstatus conventions hold,
    and the shipped Argo CD health script runs and agrees with the conditions."""
    if "namespace" not in request.fixturenames:
        yield
        return
    namespace: str = request.getfixturevalue("namespace")
    k8s_api = request.getfixturevalue("k8s_api")
    yield
    from kubernetes import client
    from tests.gitops import status_checks

    api = client.CustomObjectsApi(k8s_api)
    problems: list[str] = []
    for kind, plural in PLURALS.items():
        listing = api.list_namespaced_custom_object("dr.aegis.dev", "v1alpha1", namespace, plural)
        for item in listing.get("items", []):
            item.setdefault("kind", kind)
            problems += status_checks.kstatus_problems(item)
            problems += status_checks.argocd_problems(item)
    assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def nothing_written_is_pruned(request: pytest.FixtureRequest) -> Iterator[None]:
    """No write of an e2e test (the operator's status, events, Jobs, Secrets ...) carries a
    field the API server drops: a real server prunes unknown fields silently (Warn), so a
    status field missing from the CRD schema would vanish on a cluster without an error."""
    emulator = request.getfixturevalue("k8s_emulator")
    if emulator is None:
        yield
        return
    before = emulator.call(lambda: len(emulator.handler.dropped_fields))
    yield
    dropped = emulator.call(lambda: list(emulator.handler.dropped_fields)[before:])
    assert not dropped, "fields the API server dropped:\n" + "\n".join(dropped)


@pytest.fixture(scope="session", autouse=True)
def dashboard_metrics_scraped_after_the_run() -> Iterator[None]:
    """After the e2e run, /metrics of the operator (one endpoint per process) serves every
    metric family the Grafana dashboard reads: scraped over HTTP, as Prometheus would."""
    yield
    port = metrics.serve(0)
    if port is None:
        return  # no operator ran in this session
    import urllib.request

    from tests.chart.test_dashboard import dashboard_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    served = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    served |= {name.removesuffix("_total") for name in served}
    missing = sorted(dashboard_metric_families() - served)
    assert not missing, f"/metrics after the e2e run lacks what the dashboard reads: {missing}"
