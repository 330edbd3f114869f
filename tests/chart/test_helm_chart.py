"""The Helm chart: lint, render with every values file, validate, and hold it to its promises
(restricted pod security, least-privilege RBAC with no `*`, namespaced mode, a strict values
schema, monitoring objects that fit together)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "aegis"
VALUES_FILES = sorted((Path(__file__).resolve().parent / "values").glob("*.yaml"))
VALUES = {p.stem: p for p in VALUES_FILES}
RELEASE_NAMESPACE = "aegis-system"
# The oldest Kubernetes the chart supports with CEL validation on, and a recent one.
KUBE_VERSIONS = ("1.29.0", "1.31.0")
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com",)

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]
Helm = Callable[..., Any]

KINDS = ("backuppolicies", "recoverypoints", "restores", "failoverplans", "drdrills")
Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(group: str, resources: tuple[str, ...] | list[str], verbs: str) -> set[Grant]:
    return {(group, r, v) for r in resources for v in verbs.split()}


# What the operator calls, and nothing more (see the comments in templates/_helpers.tpl; the
# e2e suite runs the operator under these rules and fails on a refusal or an unused grant,
# tests/e2e/test_rbac_least_privilege.py).
NAMESPACED_GRANTS: set[Grant] = (
    grants("dr.aegis.dev", KINDS, "get list watch patch")
    | grants("dr.aegis.dev", ("recoverypoints",), "create delete")
    | grants("dr.aegis.dev", [f"{k}/status" for k in KINDS], "patch")
    | grants("dr.aegis.dev", ("failoverapprovals",), "list watch patch")
    | grants("dr.aegis.dev", ("failoverapprovals/status",), "patch")
    | grants("", ("events",), "create")
    | grants("", ("secrets",), "get list watch")  # the reference checks read a watch cache
    | grants("", ("pods",), "list")
    | grants("batch", ("jobs",), "get list watch create delete")
    | grants("apps", ("deployments", "statefulsets"), "get")
    | grants("apps", ("deployments/scale", "statefulsets/scale"), "patch")
)
CLUSTER_GRANTS: set[Grant] = grants(
    "apiextensions.k8s.io", ("customresourcedefinitions",), "list watch"
)
# With leader election (the default): kopf peering on the release's ClusterKopfPeering; patch
# is limited to that one object by resourceNames (test_leader_election_...).
PEERING_GRANTS: set[Grant] = grants("kopf.dev", ("clusterkopfpeerings",), "list watch create patch")
# Only with watchNamespaces: kopf's namespace observer.
NAMESPACE_OBSERVER_GRANTS: set[Grant] = grants("", ("namespaces",), "list watch")


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def granted(roles: list[Manifest]) -> set[Grant]:
    return {
        (group, resource, verb)
        for role in roles
        for rule in role.get("rules", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def operator_container(docs: list[Manifest]) -> Manifest:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ---- the restricted Pod Security Standard, field by field ---------------------------------

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def _all_containers(pod: Manifest) -> Iterator[Manifest]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def restricted_violations(pod: Manifest) -> list[str]:
    """Every way `pod` (a PodSpec) breaks the restricted Pod Security Standard (baseline
    included), as the Pod Security admission controller checks it."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field} is true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} has type {sorted(kinds)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl['name']}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    for forbidden in ("user", "role"):
        if (pod_sc.get("seLinuxOptions") or {}).get(forbidden):
            problems.append(f"pod seLinuxOptions.{forbidden} is set")
    if (pod_sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append("pod appArmorProfile is Unconfined")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("pod windowsOptions.hostProcess is true")

    for c in _all_containers(pod):
        name, sc = c["name"], c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            problems.append(f"{name}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault/Localhost")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {sc['procMount']}")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{name}: appArmorProfile is Unconfined")
        for forbidden in ("user", "role"):
            if (sc.get("seLinuxOptions") or {}).get(forbidden):
                problems.append(f"{name}: seLinuxOptions.{forbidden} is set")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems


def test_the_pod_security_check_finds_violations() -> None:
    """The checker itself: a privileged root pod is reported on every count."""
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "securityContext": {"runAsUser": 0, "seccompProfile": {"type": "Unconfined"}},
        "containers": [
            {
                "name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
            }
        ],
    }
    problems = " | ".join(restricted_violations(bad))
    for expected in (
        "hostNetwork",
        "hostPath",
        "runAsUser is 0",
        "privileged",
        "allowPrivilegeEscalation",
        "drop lacks ALL",
        "SYS_ADMIN",
        "runAsNonRoot",
        "seccompProfile",
        "hostPort",
    ):
        assert expected in problems, f"{expected!r} not reported in: {problems}"


# ---- lint and render ----------------------------------------------------------------------


def test_there_are_at_least_three_values_files() -> None:
    assert len(VALUES_FILES) >= 3, VALUES_FILES


def test_lint_strict_with_defaults(helm: Helm) -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_strict(helm: Helm, values: Path) -> None:
    result = helm("lint", "--strict", str(CHART), "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_rendered_builtin_kinds_are_valid(render: Render, values: Path) -> None:
    """Every built-in object, CRDs included, against the Kubernetes OpenAPI schemas (strict:
    unknown fields are errors). Custom resources are checked structurally below."""
    docs = render(values, "--include-crds")
    checked = 0
    for doc in docs:
        if doc["apiVersion"].split("/")[0] in CUSTOM_RESOURCE_GROUPS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} is invalid on Kubernetes {version}: "
                    f"{error.message} at {'.'.join(map(str, error.path))}"
                )
        checked += 1
    # Aegis's six kinds and kopf's ClusterKopfPeering (leader election)
    assert len(by_kind(docs, "CustomResourceDefinition")) == 7
    assert checked >= 5 + 2  # at least the CRDs, the Deployment and its Service


def test_validation_catches_a_broken_deployment(render: Render) -> None:
    """The validator is not a rubber stamp: a misspelt field in the Deployment is refused."""
    deployment = one(render(VALUES["default"]), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_object_is_labelled_and_placed(render: Render, values: Path) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for doc in render(values):
        meta = doc["metadata"]
        labels = meta.get("labels", {})
        for label in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert labels.get(label), f"{doc['kind']}/{meta['name']} lacks label {label}"
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in meta
        else:
            assert meta.get("namespace"), f"{doc['kind']}/{meta['name']} has no namespace"


# ---- the Deployment -----------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_deployment_meets_the_restricted_pod_security_standard(
    render: Render, values: Path
) -> None:
    pod = one(render(values), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    # Beyond the standard: a read-only root with a writable /tmp, and a numeric non-root user.
    container = operator_container(render(values))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_deployment_runs_elected_replicas_with_probes_and_ports(
    render: Render, values: Path
) -> None:
    docs = render(values)
    deployment = one(docs, "Deployment")
    container = operator_container(docs)
    elected = "AEGIS_PEERING" in env_of(container)
    if elected:
        # a rollout surges a new pod first: a replica stays ready to take over
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }
        assert env_of(container)["AEGIS_PEERING"] == deployment["metadata"]["name"]
        (pod_id,) = [e for e in container["env"] if e["name"] == "POD_ID"]
        assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    else:
        # no election: never two operators side by side
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["command"] + container["args"] == ["aegis", "operator"]
    env = env_of(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "metrics": int(env["AEGIS_METRICS_PORT"]),
        "health": int(env["AEGIS_HEALTH_PORT"]),
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert env["AEGIS_LOG_FORMAT"] in ("json", "text")
    assert env["AEGIS_LOG_LEVEL"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert set(env) >= {"AEGIS_WATCH_NAMESPACES", "AEGIS_AGENT_IMAGE"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_defaults(render: Render) -> None:
    docs = render(VALUES["default"])
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    container = operator_container(docs)
    env = env_of(container)
    assert container["image"] == f"ghcr.io/aegis-dr/aegis:{app_version}"
    # The agent runs from the operator's own image unless told otherwise.
    assert env["AEGIS_AGENT_IMAGE"] == container["image"]
    assert env["AEGIS_WATCH_NAMESPACES"] == ""
    assert (env["AEGIS_METRICS_PORT"], env["AEGIS_HEALTH_PORT"]) == ("8080", "8081")
    assert env["AEGIS_LOG_FORMAT"] == "json"
    # Fewer glibc arenas for the operator's thread pools (a lower peak RSS, issue 15).
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    # Two replicas with an elected leader, spread over nodes, never both evicted by a drain.
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert env["AEGIS_PEERING"] == "aegis" and env["AEGIS_PEERING_LIFETIME"] == "15"
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}


def test_malloc_arena_max_zero_leaves_glibc_default(
    helm: Helm, template_args: Callable[..., list[str]]
) -> None:
    result = helm(*template_args(None, "--set", "mallocArenaMax=0"))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert "MALLOC_ARENA_MAX" not in env_of(operator_container(docs))


def test_custom_values_reach_the_pod(render: Render) -> None:
    values = yaml.safe_load(VALUES["custom"].read_text())
    docs = render(VALUES["custom"])
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "dr-operator"
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    container = operator_container(docs)
    env = env_of(container)
    image = values["image"]
    assert container["image"] == f"{image['repository']}@{image['digest']}"
    assert container["imagePullPolicy"] == "Always"
    assert env["AEGIS_AGENT_IMAGE"] == values["agentImage"]
    assert env["AEGIS_LOG_FORMAT"] == "text"
    assert env["AEGIS_LOG_LEVEL"] == "DEBUG"
    assert env["AEGIS_CATALOG_SYNC_SECONDS"] == "600"
    assert (env["AEGIS_METRICS_PORT"], env["AEGIS_HEALTH_PORT"]) == ("9090", "9091")
    assert container["resources"] == values["resources"]
    assert container["livenessProbe"]["periodSeconds"] == 30
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    # a custom affinity replaces the default anti-affinity
    assert spec["affinity"] == values["affinity"]
    assert deployment["spec"]["replicas"] == 3
    assert (env["AEGIS_PEERING"], env["AEGIS_PEERING_LIFETIME"]) == ("dr-operator", "10")
    assert spec["imagePullSecrets"] == values["imagePullSecrets"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["runAsUser"] == 10001
    assert pod["metadata"]["annotations"] == values["podAnnotations"]
    assert pod["metadata"]["labels"]["example.com/cost-center"] == "dr"
    assert spec["serviceAccountName"] == "aegis-irsa"
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "aegis-irsa"
    assert account["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "aegis-irsa", "namespace": RELEASE_NAMESPACE}
    ]
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 9090


# ---- RBAC ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_rbac_has_no_wildcards(render: Render, values: Path) -> None:
    for role in by_kind(render(values), "ClusterRole") + by_kind(render(values), "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"
                assert not any("*" in item for item in rule.get(field, [])), rule
            assert "nonResourceURLs" not in rule, rule
            assert rule["verbs"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_cluster_mode_grants_exactly_what_the_operator_calls(render: Render) -> None:
    docs = render(VALUES["default"])
    (role,) = by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "Role")
    assert granted([role]) == NAMESPACED_GRANTS | CLUSTER_GRANTS | PEERING_GRANTS
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "aegis", "namespace": RELEASE_NAMESPACE}
    ]


def test_namespaced_mode_yields_roles_in_each_watched_namespace(render: Render) -> None:
    watched = yaml.safe_load(VALUES["namespaced"].read_text())["watchNamespaces"]
    docs = render(VALUES["namespaced"])
    assert env_of(operator_container(docs))["AEGIS_WATCH_NAMESPACES"] == ",".join(watched)

    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == sorted(watched)
    for namespace in watched:
        assert granted([roles[namespace]]) == NAMESPACED_GRANTS, namespace
        binding = bindings[namespace]
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "aegis", "namespace": RELEASE_NAMESPACE}
        ]
    # Cluster-wide, only what is cluster-scoped by nature: no Secret is readable outside the
    # watched namespaces.
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert granted([cluster_role]) == (
        CLUSTER_GRANTS | NAMESPACE_OBSERVER_GRANTS | PEERING_GRANTS
    )
    (cluster_binding,) = by_kind(docs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]


def test_no_rbac_and_an_existing_service_account(render: Render) -> None:
    docs = render(VALUES["no-rbac"])
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "aegis-managed-elsewhere"


def test_leader_election_patches_only_its_own_peering_object(render: Render) -> None:
    (role,) = by_kind(render(VALUES["default"]), "ClusterRole")
    peering = [r for r in role["rules"] if r["apiGroups"] == ["kopf.dev"]]
    named = [r for r in peering if "patch" in r["verbs"]]
    assert named == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": ["aegis"],
            "verbs": ["patch"],
        }
    ]
    # list/watch/create cannot be limited by name; nothing else is granted on them
    assert all(r.get("resourceNames") is None for r in peering if r not in named)


def test_single_standalone_replica_has_no_election_no_pdb_no_peering_rbac(
    render: Render, template_args: Callable[..., list[str]], helm: Helm
) -> None:
    docs = render(None, "--set", "replicaCount=1", "--set", "leaderElection.enabled=false")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "AEGIS_PEERING" not in env_of(operator_container(docs))
    assert "affinity" not in deployment["spec"]["template"]["spec"]
    assert not by_kind(docs, "PodDisruptionBudget")
    assert not {g for g in granted(by_kind(docs, "ClusterRole")) if g[0] == "kopf.dev"}
    # several replicas without an election would all act: refused at render time
    result = helm(*template_args(None, "--set", "leaderElection.enabled=false"))
    assert result.returncode != 0 and "needs leaderElection.enabled" in result.stderr


def test_hard_anti_affinity_over_zones(render: Render) -> None:
    docs = render(
        None,
        "--set", "replicaCount=3",
        "--set", "podAntiAffinity=hard",
        "--set", "podAntiAffinityTopologyKey=topology.kubernetes.io/zone",
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "topology.kubernetes.io/zone"
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


# ---- the values schema --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("metrics.port=abc", "metrics.port"),
        ("health.port=0", "health.port"),
        ("metrics.port=70000", "metrics.port"),
        ("replicaCount=0", "replicaCount"),
        ("leaderElection.lifetimeSeconds=1", "leaderElection.lifetimeSeconds"),
        ("podAntiAffinity=always", "podAntiAffinity"),
        ("logFormat=xml", "logFormat"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("watchNamespaces[0]=Not_A_Namespace", "watchNamespaces"),
        ("serviceMonitor.interval=often", "serviceMonitor.interval"),
        ("podSecurityContext.runAsUser=0", "podSecurityContext.runAsUser"),
        ("rbac.create=maybe", "rbac.create"),
        ("mallocArenaMax=-1", "mallocArenaMax"),
    ],
)
def test_values_schema_rejects_bad_values(
    helm: Helm, template_args: Callable[..., list[str]], flag: str, field: str
) -> None:
    result = helm(*template_args(None, "--set", flag))
    assert result.returncode != 0, f"--set {flag} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    # helm names the offending value, e.g. "- metrics.port: Invalid type" or
    # "- (root): Additional property replicaCount is not allowed".
    assert field in result.stderr, result.stderr


def test_values_schema_is_strict_at_every_level() -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Every default value is declared, and every declared value has a default.
    assert set(values) <= set(schema["properties"])
    assert set(schema["properties"]) - {"global"} == set(values)
    for key, node in schema["properties"].items():
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, key


def test_values_are_camel_case_and_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    keys = re.findall(r"^\s*([A-Za-z][A-Za-z0-9]*):", text, re.MULTILINE)
    assert keys
    for key in keys:
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"{key} is not camelCase"
    top_level = re.findall(r"^([a-z][A-Za-z0-9]*):", text, re.MULTILINE)
    lines = text.splitlines()
    for key in top_level:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        following = lines[index + 1] if index + 1 < len(lines) else ""
        assert lines[index - 1].startswith("#") or following.strip().startswith("#"), (
            f"top-level value {key} has no comment"
        )


# ---- Service, ServiceMonitor and PrometheusRule ---------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_metrics_service_selects_the_operator_pod(render: Render, values: Path) -> None:
    docs = render(values)
    service = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics"
    assert port["targetPort"] in {p["name"] for p in operator_container(docs)["ports"]}


def test_service_monitor_scrapes_the_metrics_service(render: Render) -> None:
    docs = render(VALUES["namespaced"])
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "5s")
    # Metric labels (namespace of the policy) must win over the target's namespace label.
    assert endpoint["honorLabels"] is True


ALERTS = {
    "AegisRPOBreached": ("critical", {"namespace", "policy"}),
    "AegisBackupFailing": ("warning", {"namespace", "policy"}),
    "AegisNoRecoveryPoint": ("warning", {"namespace", "policy"}),
    "AegisCopyFailing": ("warning", {"namespace", "policy"}),
    "AegisRecoveryPointCorrupted": ("warning", {"namespace", "policy"}),
    "AegisVerificationFailed": ("warning", {"namespace", "policy"}),
    "AegisRestoreFailed": ("warning", {"namespace"}),
    "AegisPrimaryDown": ("critical", {"namespace", "plan"}),
    "AegisFailoverExecuted": ("warning", {"namespace", "plan"}),
    "AegisAwaitingApproval": ("critical", {"namespace", "plan"}),
    "AegisFailoverBlocked": ("critical", {"namespace", "plan"}),
    "AegisReplicaStale": ("warning", {"namespace", "plan", "site"}),
    "AegisOperatorDown": ("critical", set()),
    "AegisDrillFailed": ("warning", {"namespace", "drill"}),
    "AegisDrillRTOObjectiveMissed": ("warning", {"namespace", "drill"}),
    "AegisDrillOverdue": ("warning", {"namespace", "drill"}),
}
PROM_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def test_prometheus_rule_has_every_alert_well_formed(render: Render) -> None:
    docs = render(VALUES["namespaced"])
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == set(ALERTS)
    for name, (severity, labels) in ALERTS.items():
        alert = alerts[name]
        assert _balanced(alert["expr"]), f"{name}: unbalanced expr {alert['expr']}"
        assert alert["labels"]["severity"] == severity, name
        if "for" in alert:
            assert PROM_DURATION.match(alert["for"]), f"{name}: for {alert['for']!r}"
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == f"https://runbooks.example.com/aegis#{name.lower()}"
        for label in labels:
            # The alert text names the resource, from the metric's own labels.
            assert f"$labels.{label}" in annotations["summary"], (name, label)
        assert "{{ $labels" not in annotations["runbook_url"]

    # The RPO alert compares each policy with its own objective: no hard-coded window.
    rpo = alerts["AegisRPOBreached"]
    assert re.fullmatch(
        r"aegis_rpo_seconds\s*>\s*on\s*\(namespace,\s*policy\)\s*aegis_rpo_objective_seconds",
        rpo["expr"],
    ), rpo["expr"]
    assert rpo["for"] == "10m"
    assert "[2h]" in alerts["AegisBackupFailing"]["expr"]
    assert "aegis_backup_failures_total" in alerts["AegisBackupFailing"]["expr"]
    # Failed and Corrupted points cannot be restored: only Completed ones count.
    assert alerts["AegisNoRecoveryPoint"]["expr"] == (
        'aegis_recovery_points{phase="Completed"} == 0'
    )
    assert alerts["AegisRecoveryPointCorrupted"]["expr"] == (
        'aegis_recovery_points{phase="Corrupted"} > 0'
    )
    for alert, counter, by in (
        ("AegisCopyFailing", "aegis_copy_failures_total", "namespace, policy"),
        ("AegisVerificationFailed", "aegis_verification_failures_total", "namespace, policy"),
        ("AegisRestoreFailed", "aegis_restore_failures_total", "namespace"),
    ):
        assert alerts[alert]["expr"] == f"sum by ({by}) (increase({counter}[1h])) > 0"
    assert alerts["AegisPrimaryDown"]["expr"] == 'aegis_site_healthy{site="primary"} == 0'
    assert alerts["AegisFailoverExecuted"]["expr"] == (
        "sum by (namespace, plan, result) "
        '(increase(aegis_failover_total{kind="Failover"}[10m])) > 0'
    )
    assert alerts["AegisAwaitingApproval"]["expr"] == (
        'aegis_failover_state{state="AwaitingApproval"} == 1'
    )
    # The operator-down rule watches the job Prometheus derives from the metrics Service.
    service = one(docs, "Service")["metadata"]["name"]
    assert alerts["AegisOperatorDown"]["expr"] == (
        f'absent(up{{job="{service}", namespace="{RELEASE_NAMESPACE}"}} == 1)'
    )


def test_monitoring_objects_are_opt_in(render: Render) -> None:
    for name in ("default", "custom", "no-rbac"):
        kinds = {d["kind"] for d in render(VALUES[name])}
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}, name


# ---- NOTES.txt ----------------------------------------------------------------------------


def _render_notes(helm: Helm, tmp_path: Path, values: Path) -> str:
    """`helm template` skips NOTES.txt and `helm install --dry-run` needs a cluster, so render
    it through `tpl` inside a ConfigMap of a throw-away copy of the chart."""
    chart = tmp_path / "aegis"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    args = ["template", "aegis", str(chart), "-n", RELEASE_NAMESPACE, "-f", str(values)]
    result = helm(*args, "--show-only", "templates/zz-notes.yaml")
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return notes


def test_notes_tell_what_was_installed_and_what_to_do(helm: Helm, tmp_path: Path) -> None:
    notes = _render_notes(helm, tmp_path, VALUES["namespaced"])
    assert "It reconciles Aegis resources in: shop, payments." in notes
    assert "kubectl -n aegis-system rollout status deploy/aegis" in notes
    assert "http://aegis-metrics.aegis-system.svc:8080/metrics" in notes
    assert "ServiceMonitor aegis" in notes
    assert "PrometheusRule aegis" in notes
    assert "{{" not in notes

    notes = _render_notes(helm, tmp_path / "default", VALUES["default"])
    assert "every namespace" in notes
    assert "serviceMonitor.enabled=true" in notes
    assert "Jobs run the image ghcr.io/aegis-dr/aegis:" in notes


def test_the_failover_approver_role_grants_creating_approvals_only(render: Render) -> None:
    docs = render(VALUES["default"], "--set", "rbac.failoverApproverRole=true")
    (approver,) = [d for d in by_kind(docs, "ClusterRole")
                   if d["metadata"]["name"].endswith("-failover-approver")]
    assert granted([approver]) == (
        grants("dr.aegis.dev", ("failoverapprovals",), "create get list watch")
        | grants("dr.aegis.dev", ("failoverplans",), "get list watch")
    )
    assert "aggregationRule" not in approver
    assert not any(k.startswith("rbac.authorization.k8s.io/aggregate")
                   for k in approver["metadata"].get("labels", {}))
