"""The operator authenticates to the API server the way it must on a real cluster: with the
bearer token of a kubeconfig, and in a pod with the mounted ServiceAccount token over TLS,
picking up a rotated token without a restart. Every request the operator sends (kopf's and
our own client's) is read back from the emulator's request log."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.e2e.helpers import GROUP, VERSION, OperatorHandle, condition, free_port, wait_for

from aegis import metrics
from aegis.k8s import client as aegis_client
from aegis.sandbox.apiserver import ApiServer
from aegis.sandbox.pytest_fixtures import CRD_DIR, make_api

pytestmark = pytest.mark.slow


def _policy(name: str) -> dict[str, Any]:
    """A policy whose Secrets do not exist: the operator reads them and reports Ready=False."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackupPolicy",
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 3 * * *",
            "source": {"redis": {"host": "127.0.0.1", "port": 6379}},
            "storage": {"bucket": "auth-test", "credentialsSecretRef": {"name": "absent-s3"}},
            "encryption": {"keySecretRef": {"name": "absent-key"}},
        },
    }


def _sent(server: ApiServer, start: int = 0) -> list[tuple[str, str, str, bool]]:
    """(agent, method, Authorization, is_watch) of every request since `start`."""
    def read() -> list[tuple[str, str, str, bool]]:
        return [
            (
                _agent(r.headers.get("User-Agent", "")),
                r.method,
                r.headers.get("Authorization", ""),
                r.params.get("watch") in ("true", "1", "True"),
            )
            for r in server.handler._requests[start:]
        ]

    result: list[tuple[str, str, str, bool]] = server.call(read)
    return [s for s in result if s[0] != "test"]


def _agent(user_agent: str) -> str:
    if user_agent.startswith("kopf"):
        return "kopf"
    return "test" if user_agent == "aegis-test-admin" else "client"


def _request_count(server: ApiServer) -> int:
    count: int = server.call(lambda: len(server.handler._requests))
    return count


def _admin(server: ApiServer, tmp_path: Path) -> Any:
    """The test's own client, told apart from the operator's by its User-Agent."""
    api = make_api(server.write_kubeconfig(tmp_path / "admin.kubeconfig"), server)
    api.user_agent = "aegis-test-admin"
    return api


def _ready_false(api: Any, namespace: str, name: str) -> bool:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "backuppolicies", name
    )
    ready = condition(obj, "Ready")
    return bool(ready and ready["status"] == "False" and ready.get("observedGeneration") == 1)


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    metrics_port = metrics.serve(free_port()) or free_port()
    env = {
        "AEGIS_AGENT_COMMAND": f"{sys.executable} -m aegis agent",
        "AEGIS_METRICS_PORT": str(metrics_port),
        "AEGIS_HEALTH_PORT": "0",
        "AEGIS_LOG_FORMAT": "text",
        # The policy's source is 127.0.0.1: allowed, so the operator goes on to read Secrets.
        "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(key, raising=False)
    aegis_client.reset()
    yield env
    aegis_client.reset()


def _namespace(api: Any, name: str) -> str:
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def test_operator_sends_the_kubeconfig_bearer_token_on_every_request(
    tmp_path: Path, operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with ApiServer(crd_dir=CRD_DIR, record_requests=True) as server:
        admin = _admin(server, tmp_path)
        token = admin.configuration.api_key["BearerToken"].partition(" ")[2]
        namespace = _namespace(admin, "auth-kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "admin.kubeconfig"))
        start = _request_count(server)
        handle = OperatorHandle(operator_env, int(operator_env["AEGIS_METRICS_PORT"])).start()
        try:
            client.CustomObjectsApi(admin).create_namespaced_custom_object(
                GROUP, VERSION, namespace, "backuppolicies", _policy("p1")
            )
            wait_for("Ready=False on the policy", lambda: _ready_false(admin, namespace, "p1"))
        finally:
            handle.stop()
        kopf_requests = [s for s in _sent(server, start) if s[0] == "kopf"]
        assert kopf_requests, "kopf sent nothing"
        assert {s[2] for s in kopf_requests} == {f"Bearer {token}"}, kopf_requests
        # Our own client (Secret reads, events) carried it too; nothing went anonymous.
        assert any(s[0] == "client" for s in _sent(server, start))
        assert all(s[2] == f"Bearer {token}" for s in _sent(server, start)), _sent(server, start)


def _service_account_tokens(admin: Any, server: ApiServer) -> tuple[str, str]:
    """Two tokens of the ServiceAccount aegis-system/aegis, bound to cluster-admin."""
    _namespace(admin, "aegis-system")
    client.CoreV1Api(admin).create_namespaced_service_account(
        "aegis-system", {"metadata": {"name": "aegis"}})
    client.RbacAuthorizationV1Api(admin).create_cluster_role_binding({
        "metadata": {"name": "aegis-test-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "aegis", "namespace": "aegis-system"}],
    })
    first = server.issue_token("aegis-system", "aegis")
    second = server.issue_token("aegis-system", "aegis")
    assert first != second
    return first, second


def test_in_cluster_operator_uses_the_mounted_token_over_tls_and_follows_its_rotation(
    tmp_path: Path, operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with ApiServer(crd_dir=CRD_DIR, record_requests=True, tls_dir=tmp_path / "tls") as server:
        assert server.tls is not None and server.url.startswith("https://")
        admin = _admin(server, tmp_path)
        namespace = _namespace(admin, "auth-in-cluster")
        # The ServiceAccount directory kubelet mounts: token, ca.crt, namespace.
        mount = tmp_path / "serviceaccount"
        mount.mkdir()
        (mount / "ca.crt").write_bytes(server.tls.ca_pem)
        (mount / "namespace").write_text("aegis-system")
        # Real ServiceAccount tokens (the emulator refuses any other with 401), for an account
        # bound to cluster-admin: this test is about the token's path, not about RBAC.
        first_token, second_token = _service_account_tokens(admin, server)
        (mount / "token").write_text(f"{first_token}\n")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        monkeypatch.setenv("AEGIS_SERVICEACCOUNT_DIR", str(mount))
        monkeypatch.setenv("AEGIS_TOKEN_REFRESH_SECONDS", "1")
        start = _request_count(server)
        handle = OperatorHandle(operator_env, int(operator_env["AEGIS_METRICS_PORT"])).start()
        try:
            client.CustomObjectsApi(admin).create_namespaced_custom_object(
                GROUP, VERSION, namespace, "backuppolicies", _policy("before")
            )
            wait_for("the first policy handled", lambda: _ready_false(admin, namespace, "before"))
            first = _sent(server, start)
            assert {s[2] for s in first if s[0] == "kopf"} == {f"Bearer {first_token}"}

            # kubelet rotates the projected token: the file is replaced while we run.
            (mount / "token").write_text(f"{second_token}\n")
            rotated_at = _request_count(server)
            counter = iter(range(1000))

            def handled_with_new_token() -> bool:
                name = f"after-{next(counter)}"
                client.CustomObjectsApi(admin).create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "backuppolicies", _policy(name)
                )
                wait_for(f"{name} handled", lambda: _ready_false(admin, namespace, name))
                return any(
                    s[2] == f"Bearer {second_token}" and s[0] == agent
                    for s in _sent(server, rotated_at)
                    for agent in ("kopf",)
                ) and any(
                    s[2] == f"Bearer {second_token}" and s[0] == "client"
                    for s in _sent(server, rotated_at)
                )

            wait_for("both clients on the rotated token", handled_with_new_token, timeout=60,
                     interval=1.0)
        finally:
            handle.stop()
        # Once switched, no new (non-watch) request goes out with the old token: watches opened
        # before the rotation keep their connection, as on a real server.
        after = _sent(server, rotated_at)
        switched = {
            agent: next(i for i, s in enumerate(after)
                        if s[0] == agent and s[2] == f"Bearer {second_token}")
            for agent in ("kopf", "client")
        }
        stale = [
            s for i, s in enumerate(after)
            if i > switched[s[0]] and not s[3] and s[2] != f"Bearer {second_token}"
        ]
        assert not stale, stale
        assert all(s[2].startswith("Bearer ") for s in after), "a request went out anonymous"


def test_kubeconfig_written_for_tls_is_trusted_by_the_client(tmp_path: Path) -> None:
    with ApiServer(crd_dir=None, tls_dir=tmp_path / "tls") as server:
        path = server.write_kubeconfig(tmp_path / "kc")
        assert yaml.safe_load(path.read_text())["clusters"][0]["cluster"][
            "certificate-authority-data"
        ]
        api = make_api(path, server)
        assert client.VersionApi(api).get_code().git_version
