"""The real operator (kopf's KopfRunner, our handlers) against the emulator, with the Job
runner executing agent Jobs on this machine against real PostgreSQL, Redis and moto S3."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.helpers import OperatorHandle, free_port

from aegis import metrics
from aegis.k8s import client as aegis_client


@pytest.fixture
def aegis_operator(
    k8s_api: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[OperatorHandle]:
    # prometheus-client serves /metrics once per process: every operator started in this
    # test process shares the first port.
    metrics_port = metrics.serve(free_port()) or free_port()
    env = {
        "KUBECONFIG": str(k8s_api.kubeconfig),
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
           "Restore": "restores", "FailoverPlan": "failoverplans", "DRDrill": "drdrills"}


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
