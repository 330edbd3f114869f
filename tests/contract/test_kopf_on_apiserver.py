"""kopf runs on the API as on a real cluster: each handler exactly once, finalizers released."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from tests.contract.helpers import backup_policy, wait_for

from aegis.k8s.client import bounded_session

GROUP, VERSION, PLURAL = "dr.aegis.dev", "v1alpha1", "backuppolicies"
FINALIZER = "dr.aegis.dev/finalizer"


def _connection(api: Any) -> kopf.ConnectionInfo:
    """kopf's login from the explicit ApiClient configuration (no global kubeconfig)."""
    cfg = api.configuration
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    scheme, _, value = (token or "").partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        scheme=scheme or None, token=value or None, certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file)


@pytest.fixture(autouse=True)
def default_registry_restored() -> Any:
    """kopf's `run` with an explicit registry makes it the process-wide default for good;
    the e2e suite's operator, later in the same process, must find Aegis's handlers there."""
    saved = kopf.get_default_registry()
    yield
    kopf.set_default_registry(saved)


def _operator(api: Any, namespace: str, calls: collections.Counter[str],
              bounded: bool = False) -> tuple[kopf.OperatorRegistry, kopf.OperatorSettings]:
    registry = kopf.OperatorRegistry()
    lock = threading.Lock()
    connection = _connection(api)

    def record(what: str) -> None:
        with lock:
            calls[what] += 1

    if bounded:
        # What Aegis's own login returns: kopf's requests through aegis.k8s.client's
        # bounded session (a gate of 2, so watches and handlers' patches share it).
        @kopf.on.login(registry=registry)
        async def login_bounded(**_: Any) -> kopf.AiohttpSession:
            return kopf.AiohttpSession(
                server=connection.server,
                aiohttp_session=bounded_session(
                    connection.as_http_headers(), connection.as_ssl_context(), 2))
    else:
        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return connection

    def ours(namespace: str | None, **_: Any) -> bool:
        return namespace == test_namespace

    test_namespace = namespace

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, when=ours, id="create")
    def on_create(body: Any, **_: Any) -> None:
        record("create")
        kopf.info(body, reason="Accepted", message="seen by the create handler")

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, when=ours, id="update",
                    field="spec.suspend")
    def on_update(old: Any, new: Any, **_: Any) -> None:
        record(f"update:{old}->{new}")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, when=ours, id="delete")
    def on_delete(**_: Any) -> None:
        record("delete")

    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dr.aegis.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="dr.aegis.dev", key="last-handled-configuration")
    settings.peering.standalone = True
    settings.watching.server_timeout = 30
    return registry, settings


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["clusterwide", "namespace-pattern", "bounded-session"])
def test_kopf_handlers_run_exactly_once_with_finalizers(k8s_api: Any, namespace: str,
                                                        scope: str) -> None:
    calls: collections.Counter[str] = collections.Counter()
    registry, settings = _operator(k8s_api, namespace, calls, bounded=scope == "bounded-session")
    custom = client.CustomObjectsApi(k8s_api)
    core = client.CoreV1Api(k8s_api)

    def body() -> dict[str, Any]:
        result: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "kopf-policy")
        return result

    # A namespace glob makes kopf list and watch /api/v1/namespaces as well.
    scope_args = (["--namespace", f"{namespace[:-3]}*"] if scope == "namespace-pattern"
                  else ["--all-namespaces"])
    with KopfRunner(["run", *scope_args, "--standalone"], registry=registry,
                    settings=settings, timeout=30) as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               backup_policy("kopf-policy"))
        wait_for(lambda: calls["create"] == 1, what="create handler")
        wait_for(lambda: FINALIZER in (body()["metadata"].get("finalizers") or []),
                 what="kopf finalizer")
        wait_for(lambda: "dr.aegis.dev/last-handled-configuration" in (
            body()["metadata"].get("annotations") or {}), what="diffbase annotation")

        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kopf-policy",
                                              {"spec": {"suspend": True}})
        wait_for(lambda: calls["update:False->True"] == 1, what="update handler")

        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kopf-policy")
        wait_for(lambda: calls["delete"] == 1, what="delete handler")

        def gone() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                         PLURAL)["items"]
            return not items

        wait_for(gone, what="object released and removed")
        time.sleep(2.0)  # room for a duplicate handler call, which must not come
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=kopf-policy").items

    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    assert dict(calls) == {"create": 1, "update:False->True": 1, "delete": 1}
    assert [(e.reason, e.message) for e in events] == [
        ("Accepted", "seen by the create handler")]
    assert "Traceback" not in runner.output
