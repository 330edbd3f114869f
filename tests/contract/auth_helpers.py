"""Helpers of the authentication and RBAC contract tests: identities other than the admin.

Everything goes through the API (TokenRequest, Roles, bindings), so the same helpers work on
the emulator and on a real cluster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kubernetes import client

RBAC_V1 = "rbac.authorization.k8s.io/v1"


def client_for_token(admin: Any, token: str | None) -> client.ApiClient:
    """An ApiClient to the same server as `admin`, authenticated by `token` only (None:
    anonymous). The admin's client certificate, token and exec hook are dropped."""
    configuration = copy.deepcopy(admin.configuration)
    configuration.api_key = {"BearerToken": f"Bearer {token}"} if token else {}
    configuration.api_key_prefix = {}
    configuration.refresh_api_key_hook = None
    configuration.cert_file = None
    configuration.key_file = None
    configuration.username = ""
    configuration.password = ""
    return client.ApiClient(configuration)


def request_token(admin: Any, namespace: str, name: str, seconds: int = 3600) -> Any:
    """TokenRequest for a ServiceAccount (what `kubectl create token` does)."""
    return client.CoreV1Api(admin).create_namespaced_service_account_token(
        name, namespace, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": {"expirationSeconds": seconds}})


@dataclass
class Account:
    """A ServiceAccount, its user name and an ApiClient authenticated as it."""

    namespace: str
    name: str
    api: client.ApiClient

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def service_account(admin: Any, namespace: str, name: str) -> Account:
    client.CoreV1Api(admin).create_namespaced_service_account(
        namespace, {"metadata": {"name": name}})
    token = request_token(admin, namespace, name).status.token
    return Account(namespace, name, client_for_token(admin, token))


def role(name: str, rules: list[dict[str, Any]], *, cluster: bool = False) -> dict[str, Any]:
    return {"apiVersion": RBAC_V1, "kind": "ClusterRole" if cluster else "Role",
            "metadata": {"name": name}, "rules": rules}


def binding(name: str, role_name: str, account: Account, *, role_kind: str = "Role",
            cluster: bool = False) -> dict[str, Any]:
    return {"apiVersion": RBAC_V1,
            "kind": "ClusterRoleBinding" if cluster else "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                        "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": account.name,
                          "namespace": account.namespace}]}


def grant(admin: Any, account: Account, rules: list[dict[str, Any]], name: str = "grant") -> None:
    """A Role with `rules` in the account's namespace, bound to it."""
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(account.namespace, role(name, rules))
    rbac.create_namespaced_role_binding(account.namespace, binding(name, name, account))


def forbidden_message(user: str, verb: str, resource: str, group: str = "", *,
                      namespace: str = "", name: str = "") -> str:
    """kube-apiserver's 403 message for a resource request (responsewriters.ForbiddenStatusError
    wrapped by errors.NewForbidden)."""
    base = resource.split("/")[0]
    qualified = f"{base}.{group}" if group else base
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    subject = f'{qualified} "{name}"' if name else qualified
    return (f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
            f'in API group "{group}" {scope}')
