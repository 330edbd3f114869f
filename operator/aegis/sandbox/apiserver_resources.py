"""The kinds the Kubernetes API emulator serves: built-ins plus CRDs, and their discovery documents.

A `ResourceInfo` is what kube-apiserver knows about one group/version/resource: its names, its
scope, its subresources and, for custom resources, the structural schema and printer columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceInfo:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    custom: bool = False
    # Only for custom resources: the version's openAPIV3Schema and additionalPrinterColumns.
    schema: JsonDict | None = field(default=None, compare=False, hash=False)
    printer_columns: tuple[JsonDict, ...] = field(default=(), compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`plural.group` as the real server spells it in messages (`configmaps` for core)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_key(self) -> tuple[str, str]:
        """All served versions of a kind share one storage, as in etcd (no conversion needed).
        `events.k8s.io/v1` Events are core Events seen through another API, as on the real
        server: one storage, converted on the way in and out (apiserver_builtins)."""
        if self.group == "events.k8s.io" and self.plural == "events":
            return ("", "events")
        return (self.group, self.plural)

    @property
    def is_events_v1(self) -> bool:
        return self.group == "events.k8s.io" and self.plural == "events"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def tracks_generation(self) -> bool:
        return self.custom or self.has_status

    def discovery_entries(self) -> list[JsonDict]:
        entry: JsonDict = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        for sub in sorted(self.subresources):
            sub_kind = "Scale" if sub == "scale" else self.kind
            sub_entry: JsonDict = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": sub_kind,
                "verbs": list(SUBRESOURCE_VERBS),
            }
            if sub == "scale":
                sub_entry["group"] = "autoscaling"
                sub_entry["version"] = "v1"
            elif sub == "token":  # serviceaccounts/token takes a TokenRequest, create only
                sub_entry.update(kind="TokenRequest", group="authentication.k8s.io",
                                 version="v1", verbs=["create"])
            entries.append(sub_entry)
        return entries


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    short: Iterable[str] = (),
    categories: Iterable[str] = (),
    subresources: Iterable[str] = (),
) -> ResourceInfo:
    return ResourceInfo(
        group=group,
        version=version,
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        short_names=tuple(short),
        categories=tuple(categories),
        subresources=frozenset(subresources),
    )


ALL = ("all",)
BUILTIN_RESOURCES: tuple[ResourceInfo, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short=["ns"],
             subresources=["status"]),
    _builtin("", "v1", "pods", "Pod", short=["po"], categories=ALL, subresources=["status"]),
    _builtin("", "v1", "services", "Service", short=["svc"], categories=ALL,
             subresources=["status"]),
    _builtin("", "v1", "configmaps", "ConfigMap", short=["cm"]),
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "events", "Event", short=["ev"]),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short=["sa"],
             subresources=["token"]),
    _builtin("", "v1", "endpoints", "Endpoints", short=["ep"]),
    _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=["pvc"],
             subresources=["status"]),
    _builtin("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False,
             short=["pv"], subresources=["status"]),
    _builtin("", "v1", "nodes", "Node", namespaced=False, short=["no"], subresources=["status"]),
    _builtin("apps", "v1", "deployments", "Deployment", short=["deploy"], categories=ALL,
             subresources=["status", "scale"]),
    _builtin("apps", "v1", "statefulsets", "StatefulSet", short=["sts"], categories=ALL,
             subresources=["status", "scale"]),
    _builtin("apps", "v1", "replicasets", "ReplicaSet", short=["rs"], categories=ALL,
             subresources=["status", "scale"]),
    _builtin("apps", "v1", "daemonsets", "DaemonSet", short=["ds"], categories=ALL,
             subresources=["status"]),
    _builtin("batch", "v1", "jobs", "Job", categories=ALL, subresources=["status"]),
    _builtin("batch", "v1", "cronjobs", "CronJob", short=["cj"], categories=ALL,
             subresources=["status"]),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin("events.k8s.io", "v1", "events", "Event", short=["ev"]),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole",
             namespaced=False),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
             namespaced=False),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions",
             "CustomResourceDefinition", namespaced=False, short=["crd", "crds"],
             subresources=["status"]),
)


def infos_from_crd(crd: JsonDict) -> list[ResourceInfo]:
    """One `ResourceInfo` per served version of a CustomResourceDefinition object."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = str(spec.get("group", ""))
    plural = str(names.get("plural", ""))
    kind = str(names.get("kind", ""))
    infos = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or None
        infos.append(
            ResourceInfo(
                group=group,
                version=str(version.get("name")),
                plural=plural,
                singular=str(names.get("singular") or kind.lower()),
                kind=kind,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset((version.get("subresources") or {}).keys()),
                custom=True,
                schema=schema,
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            )
        )
    return infos


class Registry:
    """The served resources, indexed the ways requests and discovery look them up."""

    def __init__(self) -> None:
        self._by_gvr: dict[tuple[str, str, str], ResourceInfo] = {}
        for info in BUILTIN_RESOURCES:
            self.add(info)

    def add(self, info: ResourceInfo) -> None:
        self._by_gvr[(info.group, info.version, info.plural)] = info

    def remove_crd(self, group: str, plural: str) -> None:
        for key in [k for k in self._by_gvr if k[0] == group and k[2] == plural]:
            info = self._by_gvr[key]
            if info.custom:
                del self._by_gvr[key]

    def get(self, group: str, version: str, plural: str) -> ResourceInfo | None:
        return self._by_gvr.get((group, version, plural))

    def versions_of(self, group: str, plural: str) -> list[ResourceInfo]:
        return [i for (g, _, p), i in self._by_gvr.items() if g == group and p == plural]

    def all(self) -> list[ResourceInfo]:
        return list(self._by_gvr.values())

    def group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for group, version, _ in self._by_gvr:
            versions = groups.setdefault(group, [])
            if version not in versions:
                versions.append(version)
        return groups

    # Discovery documents, shaped like kube-apiserver's legacy (non-aggregated) discovery.

    def api_versions(self, server_address: str) -> JsonDict:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        }

    def _group_doc(self, group: str, versions: list[str]) -> JsonDict:
        ordered = sorted(versions, key=_version_priority)
        return {
            "name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered],
            "preferredVersion": {"groupVersion": f"{group}/{ordered[0]}", "version": ordered[0]},
        }

    def api_group_list(self) -> JsonDict:
        groups = [
            self._group_doc(group, versions)
            for group, versions in sorted(self.group_versions().items())
            if group
        ]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def api_group(self, group: str) -> JsonDict | None:
        versions = self.group_versions().get(group)
        if not group or not versions:
            return None
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)}

    def resource_list(self, group: str, version: str) -> JsonDict | None:
        infos = [i for (g, v, _), i in sorted(self._by_gvr.items()) if g == group and v == version]
        if not infos:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for info in infos for entry in info.discovery_entries()],
        }


def _version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version priority: GA > beta > alpha, higher numbers first."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if match is None:
        return (3, 0, 0, version)
    major = int(match.group(1))
    stage = {"": 0, "beta": 1, "alpha": 2}[match.group(2) or ""]
    minor = int(match.group(3) or 0)
    return (stage, -major, -minor, version)
