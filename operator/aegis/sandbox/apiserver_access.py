"""Access control of the Kubernetes API emulator: authentication, then RBAC, then a record.

`AccessControl.admit` is the one call the HTTP layer makes per request, before serving it:
it answers who is asking (`apiserver_auth`), whether RBAC allows it (`apiserver_rbac`) and
records the decision in `usage`. It also serves the two endpoints that are about identities
rather than stored objects: TokenRequest (`serviceaccounts/<name>/token`) and
SelfSubjectAccessReview (what `kubectl auth can-i` asks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aegis.sandbox import apiserver_errors as errors
from aegis.sandbox.apiserver_auth import (
    Authenticator,
    Identity,
    access_review_spec_from_protobuf,
)
from aegis.sandbox.apiserver_rbac import (
    DEFAULT_CLUSTER_ROLE_BINDINGS,
    DEFAULT_CLUSTER_ROLES,
    RBAC_GROUP,
    RBAC_KINDS,
    Attributes,
    RbacAuthorizer,
    UsageLog,
    forbidden,
    request_attributes,
)
from aegis.sandbox.apiserver_resources import Registry, ResourceInfo

JsonDict = dict[str, Any]
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SELF_REVIEW_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


class AccessControl:
    def __init__(self, registry: Registry, store: Any, *, admin_token: str | None = None) -> None:
        self.store = store
        self._infos: dict[str, ResourceInfo] = {}
        for plural in RBAC_KINDS:
            info = registry.get(RBAC_GROUP, "v1", plural)
            assert info is not None
            self._infos[plural] = info
        serviceaccounts = registry.get("", "v1", "serviceaccounts")
        assert serviceaccounts is not None
        self.auth = Authenticator(serviceaccounts, admin_token=admin_token)
        self.rbac = RbacAuthorizer(self._lookup)
        self.usage = UsageLog()
        for info in self._infos.values():
            store.subscribe(info.storage_key, self.rbac.invalidate)
        for role in DEFAULT_CLUSTER_ROLES:
            store.create(self._infos["clusterroles"], None, role)
        for binding in DEFAULT_CLUSTER_ROLE_BINDINGS:
            store.create(self._infos["clusterrolebindings"], None, binding)

    def _lookup(self, plural: str, namespace: str | None) -> list[JsonDict]:
        result: list[JsonDict] = self.store.snapshot(self._infos[plural], namespace)
        return result

    def admit(self, method: str, path: str, params: Mapping[str, str],
              headers: Mapping[str, str], peercert: object = None, *,
              group: str | None, plural: str | None, namespace: str | None, name: str | None,
              subresource: str | None) -> tuple[Identity, Attributes]:
        """Authenticate and authorize one request; raises the 401/403 `ApiError`."""
        identity = self.auth.authenticate(headers.get("Authorization"), self.store, peercert)
        attrs = request_attributes(method, path, params, group=group, plural=plural,
                                   namespace=namespace, name=name, subresource=subresource)
        allowed, reason = self.rbac.authorize(identity, attrs)
        self.usage.record(identity.name, attrs, allowed)
        if not allowed:
            raise forbidden(identity.name, attrs, reason)
        return identity, attrs

    def token_request(self, method: str, namespace: str, name: str, body: Any,
                      content_type: str) -> JsonDict:
        if method != "POST":
            raise errors.method_not_allowed(
                f"the server does not allow this method on the requested resource ({method})")
        return self.auth.token_request(self.store, namespace, name, body, content_type)

    def serve(self, method: str, path: str, identity: Identity, body: bytes, data: Any,
              content_type: str) -> JsonDict | None:
        """The reviews about the caller (`kubectl auth can-i`, `kubectl auth whoami`), or
        None when `path` is not one of them."""
        if path not in (SSAR_PATH, SELF_REVIEW_PATH):
            return None
        if method != "POST":
            raise errors.method_not_allowed(
                f"the server does not allow this method on the requested resource ({method})")
        if path == SELF_REVIEW_PATH:
            user: JsonDict = {"username": identity.name, "groups": list(identity.groups)}
            if identity.uid:
                user["uid"] = identity.uid
            return {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": None}, "status": {"userInfo": user}}
        return self.self_subject_access_review(
            identity, body if "protobuf" in content_type else data, content_type)

    def self_subject_access_review(self, identity: Identity, body: Any,
                                   content_type: str) -> JsonDict:
        """POST selfsubjectaccessreviews: may the caller do what `spec` describes?"""
        if "protobuf" in content_type and isinstance(body, bytes):
            spec = access_review_spec_from_protobuf(body)
        elif isinstance(body, dict):
            spec = body.get("spec") or {}
        else:
            raise errors.bad_request("the body of the request must be a "
                                     "SelfSubjectAccessReview")
        resource = spec.get("resourceAttributes")
        non_resource = spec.get("nonResourceAttributes")
        if isinstance(resource, dict):
            attrs = Attributes(
                verb=str(resource.get("verb", "")), resource_request=True,
                group=str(resource.get("group", "")), resource=str(resource.get("resource", "")),
                subresource=str(resource.get("subresource", "")),
                namespace=str(resource.get("namespace", "")), name=str(resource.get("name", "")))
        elif isinstance(non_resource, dict):
            attrs = Attributes(verb=str(non_resource.get("verb", "")), resource_request=False,
                               path=str(non_resource.get("path", "")))
        else:
            raise errors.bad_request("spec: Invalid value: exactly one of "
                                     "nonResourceAttributes or resourceAttributes must be "
                                     "specified")
        allowed, reason = self.rbac.authorize(identity, attrs)
        status: JsonDict = {"allowed": allowed}
        if reason:
            status["evaluationError"] = reason
        return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
