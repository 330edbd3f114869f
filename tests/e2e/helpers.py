"""Helpers of the end-to-end tests: the operator handle, object helpers, waiting."""

from __future__ import annotations

import base64
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.rest import ApiException

GROUP, VERSION = "dr.aegis.dev", "v1alpha1"


@dataclass(frozen=True)
class OperatorIdentity:
    """Who the e2e operator is: the chart's ServiceAccount, its token's kubeconfig, and the
    rules the chart grants it."""

    user: str
    kubeconfig: Path
    rules: list[dict[str, Any]]
    documents: list[dict[str, Any]]
    other_usage: list[dict[Any, int]] = field(default_factory=list)
    """What the same identity did on other emulators of the session (a second cluster)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OperatorHandle:
    """Starts and stops the operator; a test may restart it (the process stays ours)."""

    env: dict[str, str]
    metrics_port: int
    runners: list[KopfRunner] = field(default_factory=list)
    current: KopfRunner | None = None

    def start(self) -> OperatorHandle:
        assert self.current is None
        runner = KopfRunner(
            ["run", "--all-namespaces", "--standalone", "-m", "aegis.handlers"], timeout=120
        )
        runner.__enter__()
        self.current = runner
        self.runners.append(runner)
        return self

    def stop(self) -> None:
        runner, self.current = self.current, None
        if runner is not None:
            runner.__exit__(None, None, None)
            assert runner.exception is None, runner.output
            assert runner.exit_code == 0, runner.output

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.current is not None and self.current._thread.is_alive()

    @property
    def output(self) -> str:
        return "\n".join(r.output for r in self.runners if r.output)


def custom_api(k8s_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api)


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = 90.0, interval: float = 0.2
) -> Any:
    """Poll a real observation until it is truthy (no fixed sleeps standing in for work)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_),
        None,
    )


def get(k8s_api: Any, plural: str, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom_api(k8s_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return obj


def create(k8s_api: Any, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", **body}
    body.setdefault("metadata", {})["namespace"] = namespace
    obj: dict[str, Any] = custom_api(k8s_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )
    return obj


def create_secret(k8s_api: Any, namespace: str, name: str, data: dict[str, bytes | str]) -> None:
    encoded = {
        k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
        for k, v in data.items()
    }
    client.CoreV1Api(k8s_api).create_namespaced_secret(
        namespace, {"metadata": {"name": name}, "data": encoded}
    )


def new_key() -> str:
    """A 32-byte key as base64, as `openssl rand -base64 32` prints it."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def events_for(k8s_api: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    events = client.CoreV1Api(k8s_api).list_namespaced_event(namespace)
    return [
        {"type": e.type, "reason": e.reason, "message": e.message}
        for e in events.items
        if e.involved_object and e.involved_object.name == name
    ]


# --------------------------------------------------------------------------- chart RBAC


ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "aegis"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE, RELEASE_NAMESPACE = "aegis", "aegis-system"
LEAST_PRIVILEGE_MODULE = "test_rbac_least_privilege.py"
E2E_DIR = Path(__file__).resolve().parent
DESELECTED_E2E: list[str] = []
"""Node ids of e2e tests deselected in this session (conftest's pytest_deselected)."""


def pinned_helm() -> Path:
    """The pinned helm, fetched by scripts/fetch-helm.sh when missing (CI fetches it first)."""
    if not HELM.is_file():
        fetched = subprocess.run(["bash", str(ROOT / "scripts" / "fetch-helm.sh")],
                                 capture_output=True, text=True, timeout=300, check=False)
        if fetched.returncode != 0 or not HELM.is_file():
            pytest.skip(f"the operator runs under the chart's RBAC, rendered by {HELM}, which "
                        f"is missing and scripts/fetch-helm.sh failed: {fetched.stderr[-500:]}")
    return HELM


def render_chart_rbac() -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC objects with default values."""
    result = subprocess.run(
        [str(pinned_helm()), "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _apply(api: Any, doc: dict[str, Any]) -> None:
    """Create, or replace what an earlier run left (on a real cluster)."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    namespace = doc["metadata"].get("namespace", RELEASE_NAMESPACE)
    name = doc["metadata"]["name"]
    create, replace = {
        "ServiceAccount": (lambda: core.create_namespaced_service_account(namespace, doc),
                           lambda: core.replace_namespaced_service_account(name, namespace, doc)),
        "ClusterRole": (lambda: rbac.create_cluster_role(doc),
                        lambda: rbac.replace_cluster_role(name, doc)),
        "ClusterRoleBinding": (lambda: rbac.create_cluster_role_binding(doc),
                               lambda: rbac.replace_cluster_role_binding(name, doc)),
        "Role": (lambda: rbac.create_namespaced_role(namespace, doc),
                 lambda: rbac.replace_namespaced_role(name, namespace, doc)),
        "RoleBinding": (lambda: rbac.create_namespaced_role_binding(namespace, doc),
                        lambda: rbac.replace_namespaced_role_binding(name, namespace, doc)),
    }[doc["kind"]]
    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise
        replace()


def install_operator_identity(k8s_api: Any, directory: Path) -> OperatorIdentity:
    """Apply the chart's ServiceAccount and RBAC to the cluster of `k8s_api` (admin), issue a
    token for the ServiceAccount and write a kubeconfig with it into `directory`."""
    docs = render_chart_rbac()
    try:
        client.CoreV1Api(k8s_api).create_namespace({"metadata": {"name": RELEASE_NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    for doc in docs:
        _apply(k8s_api, doc)
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    name = account["metadata"]["name"]
    issued = client.CoreV1Api(k8s_api).create_namespaced_service_account_token(
        name, RELEASE_NAMESPACE, {"spec": {"expirationSeconds": 24 * 3600}})
    admin = yaml.safe_load(Path(k8s_api.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    admin["users"] = [{"name": context["context"]["user"],
                       "user": {"token": issued.status.token}}]
    kubeconfig = directory / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(admin, sort_keys=False))
    kubeconfig.chmod(0o600)
    rules = [rule for d in docs if d["kind"] in ("ClusterRole", "Role")
             for rule in d.get("rules") or []]
    return OperatorIdentity(user=f"system:serviceaccount:{RELEASE_NAMESPACE}:{name}",
                            kubeconfig=kubeconfig, rules=rules, documents=docs)


def full_e2e_run(session: pytest.Session) -> str | None:
    """None when every e2e module ran unfiltered in this session, else why not."""
    if DESELECTED_E2E:
        return f"{len(DESELECTED_E2E)} e2e tests were deselected"
    ran = {Path(str(i.fspath)).name for i in session.items
           if Path(str(i.fspath)).parent == E2E_DIR}
    missing = sorted(p.name for p in E2E_DIR.glob("test_*.py") if p.name not in ran)
    if missing:
        return f"e2e modules not in this run: {', '.join(missing)}"
    if session.testsfailed:
        return f"{session.testsfailed} tests failed: their paths may not have run"
    return None
