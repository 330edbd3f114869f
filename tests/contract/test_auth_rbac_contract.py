"""Contract: authentication and RBAC as kube-apiserver does them.

Runs on the emulator (default) and, unchanged, on a real cluster (AEGIS_TEST_KUBECONFIG): every
identity is made through the API (a ServiceAccount, a TokenRequest, Roles and bindings) and
every expectation is the real server's (status codes, `Status` bodies, 403 messages). Only
`test_usage_is_recorded_per_identity` reads an emulator-only API, and skips elsewhere.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.contract.auth_helpers import (
    Account,
    binding,
    client_for_token,
    forbidden_message,
    grant,
    request_token,
    role,
    service_account,
)
from tests.contract.helpers import GROUP, PLURAL, VERSION, raw, widget

from aegis.sandbox.pytest_fixtures import KUBECTL

STATUS_403 = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "reason": "Forbidden", "code": 403}
STATUS_401 = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def eventually(call: Callable[[], Any], timeout: float = 15.0) -> Any:
    """`call()` once RBAC caught up: a real server's authorizer reads an informer cache, so a
    binding created a moment ago may still be unknown for a few milliseconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiException as exc:
            if exc.status != 403 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def refused(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def status_body(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


@pytest.fixture
def anonymous(k8s_api: Any) -> Iterator[client.ApiClient]:
    api = client_for_token(k8s_api, None)
    yield api
    api.close()


@pytest.fixture
def account(k8s_api: Any, namespace: str) -> Iterator[Account]:
    made = service_account(k8s_api, namespace, "robot")
    yield made
    made.api.close()


@pytest.fixture
def cluster_objects(k8s_api: Any) -> Iterator[list[tuple[str, str]]]:
    """Cluster-scoped RBAC objects a test made: (kind, name), deleted afterwards."""
    made: list[tuple[str, str]] = []
    yield made
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    for kind, name in made:
        delete = (rbac.delete_cluster_role if kind == "ClusterRole"
                  else rbac.delete_cluster_role_binding)
        try:
            delete(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


# ---------------------------------------------------------------- authentication


def test_anonymous_requests_are_forbidden_with_the_real_status(
        anonymous: client.ApiClient, namespace: str) -> None:
    response = raw(anonymous, "GET", "/api")
    assert response.status == 403
    assert response.body == {**STATUS_403, "details": {},
                             "message": 'forbidden: User "system:anonymous" cannot get path '
                                        '"/api"'}
    response = raw(anonymous, "GET", f"/api/v1/namespaces/{namespace}/pods")
    assert response.status == 403
    assert response.body == {
        **STATUS_403, "details": {"kind": "pods"},
        "message": forbidden_message("system:anonymous", "list", "pods",
                                     namespace=namespace)}
    response = raw(anonymous, "GET", "/apis/apps/v1/deployments")
    assert response.status == 403
    assert response.body == {
        **STATUS_403, "details": {"group": "apps", "kind": "deployments"},
        "message": forbidden_message("system:anonymous", "list", "deployments", "apps")}


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
def test_health_endpoints_answer_anonymous_callers(anonymous: client.ApiClient,
                                                  path: str) -> None:
    response = raw(anonymous, "GET", path, headers={"Accept": "*/*"})
    assert response.status == 200
    assert response.body == "ok"


def test_version_is_public_info(anonymous: client.ApiClient) -> None:
    response = raw(anonymous, "GET", "/version")
    assert response.status == 200
    assert response.body["gitVersion"].startswith("v1.")


def test_an_invalid_token_is_unauthorized_even_where_anonymous_is_allowed(
        k8s_api: Any) -> None:
    api = client_for_token(k8s_api, "not-a-token-this-server-issued")
    try:
        for path in ("/api", "/healthz", "/version"):
            response = raw(api, "GET", path)
            assert response.status == 401, path
            assert response.body == STATUS_401, path
    finally:
        api.close()


def test_token_request_issues_a_token_identifying_the_service_account(
        k8s_api: Any, namespace: str) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "builder"}})
    before = datetime.datetime.now(datetime.UTC)
    issued = request_token(k8s_api, namespace, "builder", seconds=3600)
    assert issued.kind == "TokenRequest"
    assert issued.status.token
    expires = issued.status.expiration_timestamp
    assert abs((expires - before).total_seconds() - 3600) < 120
    api = client_for_token(k8s_api, issued.status.token)
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        info = review.status.user_info
        assert info.username == f"system:serviceaccount:{namespace}:builder"
        assert {"system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                "system:authenticated"} <= set(info.groups)
        # Discovery is granted to every authenticated identity (system:discovery).
        assert raw(api, "GET", "/api").status == 200
        assert raw(api, "GET", "/apis").status == 200
        assert raw(api, "GET", "/api/v1").status == 200
    finally:
        api.close()


def test_token_request_refusals(k8s_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s_api)
    exc = refused(lambda: request_token(k8s_api, namespace, "nobody"))
    assert exc.status == 404
    assert status_body(exc)["message"] == 'serviceaccounts "nobody" not found'
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "short"}})
    exc = refused(lambda: request_token(k8s_api, namespace, "short", seconds=60))
    assert exc.status == 422
    assert "may not specify a duration less than 10 minutes" in status_body(exc)["message"]


def test_kubectl_create_token(kubectl: Any, k8s_api: Any, namespace: str) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "cli"}})
    result = kubectl("create", "token", "cli", "-n", namespace, "--duration", "15m", check=True)
    token = result.stdout.strip()
    api = client_for_token(k8s_api, token)
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:cli"
    finally:
        api.close()


def test_tokens_of_a_deleted_service_account_stop_working(k8s_api: Any, namespace: str) -> None:
    account = service_account(k8s_api, namespace, "leaving")
    try:
        assert raw(account.api, "GET", "/api").status == 200
        client.CoreV1Api(k8s_api).delete_namespaced_service_account("leaving", namespace)
        deadline = time.monotonic() + 30
        while (status := raw(account.api, "GET", "/api").status) != 401:
            assert time.monotonic() < deadline, f"still {status} after the delete"
            time.sleep(0.2)
        # Re-created under the same name, it is another account: the old token stays invalid.
        client.CoreV1Api(k8s_api).create_namespaced_service_account(
            namespace, {"metadata": {"name": "leaving"}})
        time.sleep(0.5)
        assert raw(account.api, "GET", "/api").status == 401
    finally:
        account.api.close()


# ---------------------------------------------------------------- RBAC


def test_nothing_is_allowed_without_a_binding(account: Account, namespace: str) -> None:
    core = client.CoreV1Api(account.api)
    exc = refused(lambda: core.read_namespaced_secret("db", namespace))
    assert exc.status == 403
    assert status_body(exc) == {
        **STATUS_403, "details": {"name": "db", "kind": "secrets"},
        "message": forbidden_message(account.user, "get", "secrets", namespace=namespace,
                                     name="db")}
    exc = refused(lambda: core.list_namespace())
    assert status_body(exc)["message"] == forbidden_message(account.user, "list",
                                                            "namespaces")
    exc = refused(lambda: client.AppsV1Api(account.api).read_namespaced_deployment(
        "web", namespace))
    assert status_body(exc) == {
        **STATUS_403, "details": {"name": "web", "group": "apps", "kind": "deployments"},
        "message": forbidden_message(account.user, "get", "deployments", "apps",
                                     namespace=namespace, name="web")}
    # Not a resource: a path.
    response = raw(account.api, "GET", "/metrics")
    assert response.status == 403
    assert response.body["message"] == (f'forbidden: User "{account.user}" cannot get path '
                                         '"/metrics"')


def test_resource_names_limit_a_rule_to_named_objects(
        k8s_api: Any, account: Account, namespace: str) -> None:
    admin = client.CoreV1Api(k8s_api)
    for name in ("allowed", "other"):
        admin.create_namespaced_secret(namespace, {"metadata": {"name": name},
                                                   "stringData": {"k": "v"}})
    grant(k8s_api, account, [{"apiGroups": [""], "resources": ["secrets"],
                              "resourceNames": ["allowed"], "verbs": ["get", "list"]}])
    core = client.CoreV1Api(account.api)
    assert eventually(lambda: core.read_namespaced_secret("allowed", namespace)).data
    exc = refused(lambda: core.read_namespaced_secret("other", namespace))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "get", "secrets", namespace=namespace, name="other")
    # A list is of no particular name, unless a metadata.name field selector names one.
    exc = refused(lambda: core.list_namespaced_secret(namespace))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "list", "secrets", namespace=namespace)
    items = core.list_namespaced_secret(namespace, field_selector="metadata.name=allowed").items
    assert [s.metadata.name for s in items] == ["allowed"]


def test_verbs_list_watch_patch_update_delete_and_deletecollection(
        k8s_api: Any, account: Account, namespace: str) -> None:
    admin = client.CoreV1Api(k8s_api)
    admin.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"},
                                                   "data": {"a": "1"}})
    grant(k8s_api, account, [{"apiGroups": [""], "resources": ["configmaps"],
                              "verbs": ["get", "list", "patch", "delete"]}])
    core = client.CoreV1Api(account.api)
    assert [c.metadata.name for c in eventually(
        lambda: core.list_namespaced_config_map(namespace)).items] == ["cfg"]
    watch = raw(account.api, "GET", f"/api/v1/namespaces/{namespace}/configmaps",
                query={"watch": "true", "timeoutSeconds": "1"})
    assert watch.status == 403
    assert watch.body["message"] == forbidden_message(account.user, "watch", "configmaps",
                                                      namespace=namespace)
    core.patch_namespaced_config_map("cfg", namespace, {"data": {"a": "2"}})
    current = core.read_namespaced_config_map("cfg", namespace)
    current.data["a"] = "3"
    exc = refused(lambda: core.replace_namespaced_config_map("cfg", namespace, current))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "update", "configmaps", namespace=namespace, name="cfg")
    exc = refused(lambda: core.create_namespaced_config_map(namespace,
                                                            {"metadata": {"name": "new"}}))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "create", "configmaps", namespace=namespace)
    exc = refused(lambda: core.delete_collection_namespaced_config_map(namespace))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "deletecollection", "configmaps", namespace=namespace)
    core.delete_namespaced_config_map("cfg", namespace)


def test_wildcards_grant_every_verb_and_group(k8s_api: Any, account: Account,
                                             namespace: str) -> None:
    grant(k8s_api, account, [{"apiGroups": ["*"], "resources": ["configmaps"],
                              "verbs": ["*"]}])
    core = client.CoreV1Api(account.api)
    eventually(lambda: core.create_namespaced_config_map(namespace,
                                                         {"metadata": {"name": "w"}}))
    core.delete_collection_namespaced_config_map(namespace)
    assert core.list_namespaced_config_map(namespace).items == []
    exc = refused(lambda: core.list_namespaced_secret(namespace))
    assert exc.status == 403


def test_subresources_are_granted_separately(k8s_api: Any, account: Account, namespace: str,
                                            widget_crd: str) -> None:
    client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("w1"))
    grant(k8s_api, account, [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get"]},
        {"apiGroups": [GROUP], "resources": ["*/status"], "verbs": ["patch"]}])
    custom = client.CustomObjectsApi(account.api)
    eventually(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                           "w1"))
    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "w1", {"status": {"phase": "Ready"}})
    assert patched["status"]["phase"] == "Ready"
    exc = refused(lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "w1", {"spec": {"size": 4}}))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "patch", PLURAL, GROUP, namespace=namespace, name="w1")
    exc = refused(lambda: custom.get_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "w1"))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "get", f"{PLURAL}/status", GROUP, namespace=namespace, name="w1")
    exc = refused(lambda: client.AppsV1Api(account.api).read_namespaced_deployment_scale(
        "web", namespace))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "get", "deployments/scale", "apps", namespace=namespace, name="web")


def test_create_on_the_token_subresource(k8s_api: Any, account: Account,
                                        namespace: str) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "deputy"}})
    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "boss"}})
    grant(k8s_api, account, [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                              "resourceNames": ["deputy"], "verbs": ["create"]}])
    issued = eventually(lambda: request_token(account.api, namespace, "deputy"))
    assert issued.status.token
    exc = refused(lambda: request_token(account.api, namespace, "boss"))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "create", "serviceaccounts/token", namespace=namespace, name="boss")


def test_role_bindings_are_namespaced_cluster_role_bindings_are_not(
        k8s_api: Any, account: Account, namespace: str,
        cluster_objects: list[tuple[str, str]]) -> None:
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    suffix = uuid.uuid4().hex[:8]
    reader = f"contract-pod-reader-{suffix}"
    rbac.create_cluster_role(role(reader, [{"apiGroups": [""], "resources": ["pods"],
                                            "verbs": ["list"]}], cluster=True))
    cluster_objects.append(("ClusterRole", reader))
    # A ClusterRole bound by a RoleBinding grants its rules in that namespace only.
    rbac.create_namespaced_role_binding(namespace, binding("pods", reader, account,
                                                           role_kind="ClusterRole"))
    core = client.CoreV1Api(account.api)
    eventually(lambda: core.list_namespaced_pod(namespace))
    exc = refused(lambda: core.list_namespaced_pod("default"))
    assert status_body(exc)["message"] == forbidden_message(account.user, "list", "pods",
                                                            namespace="default")
    exc = refused(lambda: core.list_pod_for_all_namespaces())
    assert status_body(exc)["message"] == forbidden_message(account.user, "list", "pods")
    # Bound by a ClusterRoleBinding: everywhere, and at the cluster scope.
    wide = f"contract-pods-{suffix}"
    rbac.create_cluster_role_binding(binding(wide, reader, account, role_kind="ClusterRole",
                                             cluster=True))
    cluster_objects.append(("ClusterRoleBinding", wide))
    eventually(lambda: core.list_namespaced_pod("default"))
    eventually(lambda: core.list_pod_for_all_namespaces())


def test_a_binding_to_a_missing_role_says_so(k8s_api: Any, account: Account,
                                            namespace: str) -> None:
    client.RbacAuthorizationV1Api(k8s_api).create_namespaced_role_binding(
        namespace, binding("ghostly", "ghost", account))
    core = client.CoreV1Api(account.api)

    def message() -> str:
        exc = refused(lambda: core.list_namespaced_pod(namespace))
        return str(status_body(exc)["message"])

    expected = (forbidden_message(account.user, "list", "pods", namespace=namespace)
                + ': RBAC: role.rbac.authorization.k8s.io "ghost" not found')
    deadline = time.monotonic() + 15
    while (got := message()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == expected


def test_usage_is_recorded_per_identity(k8s_api: Any, account: Account,
                                       namespace: str) -> None:
    if not getattr(k8s_api, "emulated", False):
        pytest.skip("the usage record is the emulator's own API")
    from aegis.sandbox.apiserver_rbac import Access

    grant(k8s_api, account, [{"apiGroups": [""], "resources": ["configmaps"],
                              "verbs": ["list"]}])
    core = client.CoreV1Api(account.api)
    core.list_namespaced_config_map(namespace)
    core.list_namespaced_config_map(namespace)
    refused(lambda: core.read_namespaced_secret("x", namespace))
    usage = k8s_api.server.usage(account.user)
    assert usage[Access("list", "", "configmaps", "", namespace, "", True)] == 2
    assert usage[Access("get", "", "secrets", "", namespace, "", False)] == 1
    assert [a for a in usage if not a.allowed] == [
        Access("get", "", "secrets", "", namespace, "", False)]


def test_scale_subresource_alone_lets_an_identity_scale(k8s_api: Any, account: Account,
                                                        namespace: str) -> None:
    labels = {"app": "web"}
    client.AppsV1Api(k8s_api).create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "pause", "image": "registry.k8s.io/pause:3.9"}]}}}})
    grant(k8s_api, account, [{"apiGroups": ["apps"], "resources": ["deployments/scale"],
                              "verbs": ["get", "patch"]}])
    apps = client.AppsV1Api(account.api)
    scale = eventually(lambda: apps.read_namespaced_deployment_scale("web", namespace))
    assert (scale.kind, scale.spec.replicas) == ("Scale", 0)
    assert scale.status.selector == "app=web"
    scaled = apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 2}})
    assert scaled.spec.replicas == 2
    assert client.AppsV1Api(k8s_api).read_namespaced_deployment(
        "web", namespace).spec.replicas == 2
    exc = refused(lambda: apps.patch_namespaced_deployment("web", namespace,
                                                           {"spec": {"replicas": 1}}))
    assert status_body(exc)["message"] == forbidden_message(
        account.user, "patch", "deployments", "apps", namespace=namespace, name="web")


def test_kubectl_as_a_service_account_can_i_and_whoami(
        k8s_api: Any, account: Account, namespace: str, tmp_path: Any) -> None:
    grant(k8s_api, account, [{"apiGroups": [""], "resources": ["configmaps"],
                              "verbs": ["list"]}])
    config = yaml.safe_load(k8s_api.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    token = request_token(k8s_api, namespace, account.name).status.token
    config["users"] = [{"name": context["context"]["user"], "user": {"token": token}}]
    kubeconfig = tmp_path / "robot.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir",
                               str(tmp_path / "cache"), *args],
                              capture_output=True, text=True, timeout=60, check=False)

    deadline = time.monotonic() + 15
    while (can := kubectl("auth", "can-i", "list", "configmaps", "-n", namespace)
           ).stdout.strip() != "yes" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert can.stdout.strip() == "yes", can.stderr
    cannot = kubectl("auth", "can-i", "get", "secrets", "-n", namespace)
    assert cannot.stdout.strip() == "no"
    whoami = kubectl("auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == account.user
    listed = kubectl("get", "secrets", "-n", namespace)
    assert listed.returncode != 0
    assert ("Error from server (Forbidden): " + forbidden_message(
        account.user, "list", "secrets", namespace=namespace)) in listed.stderr


def test_emulator_admin_certificate_and_token_file_kubeconfigs(k8s_api: Any, namespace: str,
                                                               tmp_path: Any) -> None:
    """The emulator's own kubeconfig writers (on a real cluster, its admin is whatever
    AEGIS_TEST_KUBECONFIG holds)."""
    if not getattr(k8s_api, "emulated", False):
        pytest.skip("ApiServer.write_kubeconfig is the emulator's")
    from aegis.sandbox.pytest_fixtures import make_api

    server = k8s_api.server

    def whoami(api: Any) -> Any:
        return client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        ).status.user_info

    by_certificate = make_api(server.write_kubeconfig(tmp_path / "cert.kubeconfig",
                                                      client_certificate=True), server)
    assert by_certificate.configuration.cert_file
    assert not (by_certificate.configuration.api_key or {}).get("BearerToken")
    info = whoami(by_certificate)
    assert (info.username, "system:masters" in info.groups) == ("kubernetes-admin", True)
    client.CoreV1Api(by_certificate).list_namespaced_secret(namespace)

    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "mounted"}})
    token_file = server.write_token_file(tmp_path / "sa" / "token", namespace, "mounted")
    mounted = make_api(server.write_kubeconfig(tmp_path / "file.kubeconfig",
                                               token_file=token_file), server)
    assert whoami(mounted).username == f"system:serviceaccount:{namespace}:mounted"
    with pytest.raises(ApiException) as refused_list:
        client.CoreV1Api(mounted).list_namespaced_secret(namespace)
    assert refused_list.value.status == 403
