"""RBAC authorization in the Kubernetes API emulator, and a record of what each identity used.

The rules are kube-apiserver's (`plugin/pkg/auth/authorizer/rbac`):

- a request is resolved into attributes like the real `RequestInfoFactory`: verb (`get`,
  `list`, `watch` for `?watch=true` on a collection, `create`, `update`, `patch`, `delete`,
  `deletecollection`; lower-case HTTP method for non-resource paths), API group, resource,
  subresource, namespace (a namespace's own name for `/api/v1/namespaces/<name>`), name (also
  from a `metadata.name=` field selector on lists and watches);
- `system:masters` is allowed everything without a binding;
- otherwise the rules of every ClusterRoleBinding and, for a namespaced request, every
  RoleBinding of that namespace whose subjects name the user, one of its groups, or its
  ServiceAccount are checked: verbs (`*`), apiGroups (`*`), resources (`*`, `res/sub`,
  `*/sub`), resourceNames, nonResourceURLs (exact or `prefix*`);
- a refusal is a 403 with the real message, e.g. `secrets "x" is forbidden: User
  "system:serviceaccount:ns:sa" cannot get resource "secrets" in API group "" in the
  namespace "ns"`; a binding to a missing role adds `: RBAC: role.rbac.authorization.k8s.io
  "r" not found` as the real authorizer does.

The default ClusterRoles every cluster has for discovery (`system:discovery`,
`system:basic-user`, `system:public-info-viewer`, `cluster-admin`) and their bindings are
created at start-up, so anonymous callers may read `/healthz` and `/version` and
authenticated ones discovery, as on a real cluster.

`UsageLog` keeps, per user, every (verb, group, resource, subresource, namespace) allowed and
every refusal, for least-privilege checks.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aegis.sandbox.apiserver_auth import AUTHENTICATED, MASTERS, UNAUTHENTICATED, Identity
from aegis.sandbox.apiserver_errors import ApiError

JsonDict = dict[str, Any]
RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_KINDS = ("roles", "rolebindings", "clusterroles", "clusterrolebindings")


@dataclass(frozen=True)
class Attributes:
    """What the authorizer decides on (k8s.io/apiserver `authorizer.Attributes`)."""

    verb: str
    resource_request: bool
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    def describe(self) -> str:
        if not self.resource_request:
            return f"{self.verb} {self.path}"
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        group = f".{self.group}" if self.group else ""
        where = f" -n {self.namespace}" if self.namespace else ""
        return f"{self.verb} {resource}{group}{where}"


def request_attributes(method: str, path: str, params: Mapping[str, str], *,
                       group: str | None, plural: str | None, namespace: str | None,
                       name: str | None, subresource: str | None) -> Attributes:
    """Attributes of one request; `group`/`plural`/... come from the emulator's path parser
    (`group` None: not an `/api` or `/apis` path)."""
    if group is None or plural is None:
        return Attributes(verb=method.lower(), resource_request=False, path=path)
    verb = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}.get(method, method.lower())
    if name is None:
        if verb == "get":
            verb = "watch" if params.get("watch", "").lower() in ("true", "1") else "list"
        elif verb == "delete":
            verb = "deletecollection"
        if verb in ("list", "watch", "deletecollection"):
            name = _exact_name(params.get("fieldSelector") or "")
    if group == "" and plural == "namespaces" and name:
        namespace = name  # a namespace is authorized in itself, as on the real server
    return Attributes(verb=verb, resource_request=True, group=group, resource=plural,
                      subresource=subresource or "", namespace=namespace or "",
                      name=name or "", path=path)


def _exact_name(field_selector: str) -> str | None:
    for term in field_selector.split(","):
        key, op, value = term.partition("==") if "==" in term else term.partition("=")
        if op and key.strip() == "metadata.name" and not key.strip().endswith("!"):
            return value.strip() or None
    return None


def forbidden(user: str, attrs: Attributes, reason: str = "") -> ApiError:
    """The real server's 403 (responsewriters.ForbiddenStatusError + errors.NewForbidden)."""
    message = f'User "{user}" cannot {attrs.verb}'
    if attrs.resource_request:
        resource = (f"{attrs.resource}/{attrs.subresource}" if attrs.subresource
                    else attrs.resource)
        scope = (f'in the namespace "{attrs.namespace}"' if attrs.namespace
                 else "at the cluster scope")
        message += f' resource "{resource}" in API group "{attrs.group}" {scope}'
    else:
        message += f' path "{attrs.path}"'
    if reason:
        message += f": {reason}"
    details: JsonDict = {}
    if attrs.resource_request:
        qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
        if attrs.name:
            details["name"] = attrs.name
        if attrs.group:
            details["group"] = attrs.group
        details["kind"] = attrs.resource
        text = (f'{qualified} "{attrs.name}" is forbidden: {message}' if attrs.name
                else f"{qualified} is forbidden: {message}")
    else:
        text = f"forbidden: {message}"
    return Forbidden(403, "Forbidden", text, details)


class Forbidden(ApiError):
    """A 403 whose body always carries `details`, `{}` for paths, as the real server's."""

    def to_status(self) -> JsonDict:
        body = super().to_status()
        body.setdefault("details", {})
        return body


# ---------------------------------------------------------------------- rule matching


def _has(values: Any, wanted: str) -> bool:
    return isinstance(values, list) and (wanted in values or "*" in values)


def _resource_matches(resources: Any, resource: str, subresource: str) -> bool:
    if not isinstance(resources, list):
        return False
    combined = f"{resource}/{subresource}" if subresource else resource
    for rule in resources:
        if rule in ("*", combined):
            return True
        if subresource and rule == f"*/{subresource}":
            return True
    return False


def _url_matches(urls: Any, path: str) -> bool:
    if not isinstance(urls, list):
        return False
    for rule in urls:
        if rule == "*" or rule == path:
            return True
        if isinstance(rule, str) and rule.endswith("*") and path.startswith(rule[:-1]):
            return True
    return False


def rule_allows(rule: JsonDict, attrs: Attributes) -> bool:
    """One PolicyRule against one request (rbac.RuleAllows)."""
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.resource_request:
        return _url_matches(rule.get("nonResourceURLs"), attrs.path)
    if not _has(rule.get("apiGroups"), attrs.group):
        return False
    if not _resource_matches(rule.get("resources"), attrs.resource, attrs.subresource):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _subject_applies(subject: JsonDict, identity: Identity, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == identity.name
    if kind == "Group":
        return name in identity.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and identity.name == f"system:serviceaccount:{namespace}:{name}"
    return False


# ---------------------------------------------------------------------- the authorizer


class RbacAuthorizer:
    """Decides from the Roles, ClusterRoles and bindings in the store (read on each decision
    through `lookup(plural, namespace)`; per-identity rule sets are cached until an RBAC
    object changes, see `invalidate`)."""

    def __init__(self, lookup: Any) -> None:
        # lookup(plural, namespace or None) -> list of stored objects of that RBAC kind
        self._lookup = lookup
        self._cache: dict[tuple[str, tuple[str, ...], str], tuple[list[JsonDict], list[str]]] = {}

    def invalidate(self, *_: Any) -> None:
        self._cache.clear()

    def _role_rules(self, ref: JsonDict, namespace: str) -> tuple[list[JsonDict], str | None]:
        kind, name = ref.get("kind"), ref.get("name")
        plural = "clusterroles" if kind == "ClusterRole" else "roles"
        scope = None if kind == "ClusterRole" else namespace
        for role in self._lookup(plural, scope):
            if role["metadata"]["name"] == name:
                return list(role.get("rules") or []), None
        singular = "clusterrole" if kind == "ClusterRole" else "role"
        return [], f'{singular}.{RBAC_GROUP} "{name}" not found'

    def rules_for(self, identity: Identity, namespace: str) -> tuple[list[JsonDict], list[str]]:
        """Every rule that applies to `identity` in `namespace` ("" for cluster-scoped), and
        the errors met (bindings to missing roles)."""
        key = (identity.name, identity.groups, namespace)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        rules: list[JsonDict] = []
        problems: list[str] = []
        for binding in self._lookup("clusterrolebindings", None):
            if any(_subject_applies(s, identity, "") for s in binding.get("subjects") or []):
                found, problem = self._role_rules(binding.get("roleRef") or {}, "")
                rules += found
                problems += [problem] if problem else []
        if namespace:
            for binding in self._lookup("rolebindings", namespace):
                if any(_subject_applies(s, identity, namespace)
                       for s in binding.get("subjects") or []):
                    found, problem = self._role_rules(binding.get("roleRef") or {}, namespace)
                    rules += found
                    problems += [problem] if problem else []
        self._cache[key] = (rules, problems)
        return rules, problems

    def authorize(self, identity: Identity, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason): the reason is the real RBAC authorizer's, "" unless a binding
        names a missing role."""
        if identity.privileged:
            return True, ""
        rules, problems = self.rules_for(identity, attrs.namespace)
        if any(rule_allows(rule, attrs) for rule in rules):
            return True, ""
        if not problems:
            return False, ""
        aggregate = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
        return False, f"RBAC: {aggregate}"


# ---------------------------------------------------------------------- defaults


def _cluster_role(name: str, rules: list[JsonDict]) -> JsonDict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                         "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "rules": rules}


def _group_binding(name: str, role: str, groups: list[str]) -> JsonDict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                         "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups]}


# The bootstrap policy of kube-apiserver (plugin/pkg/auth/authorizer/rbac/bootstrappolicy),
# reduced to what concerns the requests an emulator client makes.
DEFAULT_CLUSTER_ROLES: tuple[JsonDict, ...] = (
    _cluster_role("cluster-admin", [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
    _cluster_role("system:discovery", [{
        "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                            "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
        "verbs": ["get"]}]),
    _cluster_role("system:public-info-viewer", [{
        "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
        "verbs": ["get"]}]),
    _cluster_role("system:basic-user", [
        {"apiGroups": ["authorization.k8s.io"],
         "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"],
         "verbs": ["create"]}]),
)
DEFAULT_CLUSTER_ROLE_BINDINGS: tuple[JsonDict, ...] = (
    _group_binding("cluster-admin", "cluster-admin", [MASTERS]),
    _group_binding("system:discovery", "system:discovery", [AUTHENTICATED]),
    _group_binding("system:basic-user", "system:basic-user", [AUTHENTICATED]),
    _group_binding("system:public-info-viewer", "system:public-info-viewer",
                   [AUTHENTICATED, UNAUTHENTICATED]),
)


# ---------------------------------------------------------------------- usage


@dataclass(frozen=True, order=True)
class Access:
    """One kind of request an identity made: resource requests fill group..namespace,
    non-resource requests `path`. `allowed` False for a refusal."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    path: str
    allowed: bool

    @property
    def resource_name(self) -> str:
        """`resource` or `resource/subresource`, as RBAC rules spell it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


class UsageLog:
    """Per user, how often each `Access` happened. Thread-safe: tests read it from their
    thread while the server's loop writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_user: dict[str, Counter[Access]] = {}

    def record(self, user: str, attrs: Attributes, allowed: bool) -> None:
        access = Access(attrs.verb, attrs.group, attrs.resource, attrs.subresource,
                        attrs.namespace, "" if attrs.resource_request else attrs.path, allowed)
        with self._lock:
            counter = self._by_user.get(user)
            if counter is None:
                counter = self._by_user[user] = Counter()
            counter[access] += 1

    def of(self, user: str) -> dict[Access, int]:
        with self._lock:
            return dict(self._by_user.get(user, {}))

    def users(self) -> list[str]:
        with self._lock:
            return sorted(self._by_user)

    def refused(self, user: str) -> list[Access]:
        return sorted(a for a in self.of(user) if not a.allowed)

    def clear(self, user: str | None = None) -> None:
        with self._lock:
            if user is None:
                self._by_user.clear()
            else:
                self._by_user.pop(user, None)
