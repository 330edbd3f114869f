"""Contract-test fixtures: the same tests run against the emulator and a real kube-apiserver.

`k8s_api`, `namespace` and `kubectl` come from `aegis.sandbox.pytest_fixtures` (loaded as a
plugin by tests/conftest.py). With AEGIS_TEST_KUBECONFIG set they point at a real cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.contract.helpers import GROUP, VERSION, WIDGET_CRD, WidgetApi, raw, wait_for


@pytest.fixture(scope="session")
def widget_crd(k8s_api: Any) -> str:
    """Register the Widget CRD through the API (the emulator registers it on the fly)."""
    ext = client.ApiextensionsV1Api(k8s_api)
    name: str = WIDGET_CRD["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(lambda: any(c.type == "Established" and c.status == "True"
                         for c in (ext.read_custom_resource_definition(name).status.conditions
                                   or [])), what=f"CRD {name} Established")
    # Discovery of a brand-new CRD lags a little on real servers.
    wait_for(lambda: raw(k8s_api, "GET", f"/apis/{GROUP}/{VERSION}").status == 200,
             what="widget discovery")
    return name



@pytest.fixture
def custom(k8s_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api)


@pytest.fixture
def core(k8s_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


@pytest.fixture
def widgets(widget_crd: str, custom: client.CustomObjectsApi,
            namespace: str) -> Iterator[WidgetApi]:
    yield WidgetApi(custom, namespace)

