"""pytest fixtures for a Kubernetes API: the emulator by default, a real cluster on request.

Load with `pytest_plugins = ["aegis.sandbox.pytest_fixtures"]`. With `AEGIS_TEST_KUBECONFIG`
naming a kubeconfig, the same fixtures talk to that cluster instead (the CRDs from `crds/` are
created there if missing) and every test using them gets the `k8s` marker.

- `k8s_api` (session): a `kubernetes.client.ApiClient` subclass with `.url`, `.kubeconfig`
  (Path), `.emulated`, `.server` (the `ApiServer`, or None on a real cluster) and
  `.new_client()` for a fresh ApiClient. No global kubernetes configuration is touched.
- `namespace`: a fresh namespace for this test, deleted afterwards.
- `kubectl`: runs the real kubectl against `k8s_api`; returns `CompletedProcess` (text).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis.sandbox.apiserver import ApiServer, load_crds

REPO_ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = REPO_ROOT / "crds"
REAL_CLUSTER_ENV = "AEGIS_TEST_KUBECONFIG"
KUBECTL = os.environ.get("AEGIS_KUBECTL", "kubectl")


def _api_client_class() -> type[Any]:
    from kubernetes import client

    class K8sApi(client.ApiClient):  # type: ignore[misc]
        """An ApiClient that also knows where its API server is."""

        url: str
        kubeconfig: Path
        emulated: bool
        server: ApiServer | None

        def new_client(self) -> Any:
            return client.ApiClient(configuration=self.configuration)

    return K8sApi


def make_api(kubeconfig: Path, server: ApiServer | None) -> Any:
    """An ApiClient (subclass) for a kubeconfig, configured explicitly (no global state)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api = _api_client_class()(configuration=configuration)
    api.url = configuration.host
    api.kubeconfig = kubeconfig
    api.emulated = server is not None
    api.server = server
    return api


def ensure_crds(api: Any, crd_dir: Path = CRD_DIR, timeout: float = 60.0) -> None:
    """Create the CRDs of `crd_dir` in a real cluster if missing, and wait until Established."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(api)
    names = []
    for crd in load_crds(crd_dir):
        names.append(crd["metadata"]["name"])
        try:
            ext.read_custom_resource_definition(crd["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 404:
                raise
            ext.create_custom_resource_definition(crd)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            found = ext.read_custom_resource_definition(name)
            conditions = (found.status.conditions or []) if found.status else []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout} s")
            time.sleep(0.5)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get(REAL_CLUSTER_ENV):
        return
    for item in items:
        if {"k8s_api", "namespace", "kubectl"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="session")
def k8s_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer | None]:
    """The emulator (None when AEGIS_TEST_KUBECONFIG points at a real cluster)."""
    if os.environ.get(REAL_CLUSTER_ENV):
        yield None
        return
    server = ApiServer(crd_dir=CRD_DIR).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def k8s_api(k8s_emulator: ApiServer | None,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    real = os.environ.get(REAL_CLUSTER_ENV)
    if real:
        kubeconfig = Path(real)
    else:
        assert k8s_emulator is not None
        kubeconfig = k8s_emulator.write_kubeconfig(
            tmp_path_factory.mktemp("k8s") / "kubeconfig")
    api = make_api(kubeconfig, k8s_emulator)
    if real:
        ensure_crds(api)
    try:
        yield api
    finally:
        api.close()


def unique_namespace_name(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def namespace(k8s_api: Any) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(k8s_api)
    name = unique_namespace_name()
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": name, "labels": {"aegis.dev/test": "true"}}})
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


KubectlRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def kubectl(k8s_api: Any, tmp_path: Path) -> KubectlRunner:
    """`kubectl("get", "bp", "-n", ns, input=yaml_text, check=True)`."""
    cache_dir = tmp_path / "kubectl-cache"

    def run(*args: str, input: str | dict[str, Any] | None = None, check: bool = False,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        text = yaml.safe_dump(input) if isinstance(input, dict) else input
        result = subprocess.run(
            [KUBECTL, "--kubeconfig", str(k8s_api.kubeconfig), "--cache-dir", str(cache_dir),
             *args],
            input=text, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    return run
