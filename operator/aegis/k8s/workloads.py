"""Kubernetes-backed ports of the failover code: Secrets, workload replicas, Jobs.

The probes and steps (`aegis.probes`, `aegis.steps`) only know small Protocols so they can be
tested without a cluster; these are the implementations the operator hands them, all bound
to one FailoverPlan's namespace. Every call is a blocking API call: use them from threads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from aegis.api.common import SecretKeyRef, SecretRef
from aegis.k8s import objects
from aegis.k8s.cache import SecretCache
from aegis.k8s.client import api_client
from aegis.k8s.jobs import JobState, job_state_of, owner_reference
from aegis.labels import PLAN_LABEL, TRANSITION_LABEL
from aegis.probes.workload import WorkloadKind, WorkloadReplicas
from aegis.reach import namespace_allowed


class SecretsOfNamespace:
    """`SecretReader` over the Secrets of one namespace (through the operator's watch-fed
    `cache` when given: a probe every few seconds then costs no API call). Errors name the
    Secret and the key, never a value."""

    def __init__(self, namespace: str, cache: SecretCache | None = None) -> None:
        self.namespace = namespace
        self.cache = cache

    def data(self, ref: SecretRef) -> dict[str, str]:
        raw = objects.read_secret(self.namespace, ref.name, self.cache)
        try:
            return {key: value.decode() for key, value in raw.items()}
        except UnicodeDecodeError:
            raise ValueError(f"Secret {ref.name} holds a value that is not UTF-8 text") from None

    def value(self, ref: SecretKeyRef) -> str:
        data = self.data(SecretRef(name=ref.name))
        if ref.key not in data:
            raise KeyError(
                f"Secret {self.namespace}/{ref.name} has no key {ref.key!r}: add it or fix the "
                "secret reference"
            )
        return data[ref.key]


def _apps() -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(api_client())


def replicas_of(obj: Mapping[str, Any]) -> WorkloadReplicas:
    """Replica counts from a Deployment or StatefulSet as JSON (pure)."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    desired = spec.get("replicas")
    return WorkloadReplicas(
        desired=1 if desired is None else int(desired),  # the API server's default
        current=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        generation=int((obj.get("metadata") or {}).get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
    )


class NamespaceNotAllowed(PermissionError):
    """A plan asked for a workload in a namespace it may not reach."""


class Workloads:
    """`WorkloadReader` and `WorkloadScaler` through the apps/v1 API. Replicas are set
    through the scale subresource, as `kubectl scale` does: it needs only the `*/scale`
    permission and touches nothing else of the spec.

    Bound to a plan's namespace (`home`), it refuses, before any API call, a workload in
    another namespace unless `reachable` lists it: the spec check refuses such plans
    already, this is the second line that holds even if a caller skipped it."""

    def __init__(self, home: str | None = None, reachable: Sequence[str] = ()) -> None:
        self.home = home
        self.reachable = tuple(reachable)

    def _admit(self, kind: WorkloadKind, namespace: str, name: str) -> None:
        if self.home is not None and not namespace_allowed(self.home, namespace, self.reachable):
            raise NamespaceNotAllowed(
                f"{kind} {namespace}/{name} is outside the plan's namespace {self.home}; "
                f"AEGIS_REACHABLE_NAMESPACES does not list {namespace}"
            )

    def read_replicas(self, kind: WorkloadKind, namespace: str, name: str) -> WorkloadReplicas:
        self._admit(kind, namespace, name)
        apps = _apps()
        try:
            if kind == "Deployment":
                obj = apps.read_namespaced_deployment(name, namespace, _preload_content=False)
            else:
                obj = apps.read_namespaced_stateful_set(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                raise objects.NotFound(f"{kind} {namespace}/{name} not found") from None
            raise
        return replicas_of(_json(obj))

    def set_replicas(self, kind: WorkloadKind, namespace: str, name: str, replicas: int) -> None:
        self._admit(kind, namespace, name)
        apps = _apps()
        body = {"spec": {"replicas": replicas}}
        deployment = kind == "Deployment"
        try:
            if deployment:
                apps.patch_namespaced_deployment_scale(name, namespace, body)
            else:
                apps.patch_namespaced_stateful_set_scale(name, namespace, body)
            return
        except ApiException as error:
            if error.status != 404:
                raise
        # 404 from /scale: the workload is missing, or an API server that does not serve the
        # subresource (kube-apiserver and the sandbox's emulator do): then patch
        # spec.replicas itself (the chart grants no `patch` on the workloads, only on /scale).
        self.read_replicas(kind, namespace, name)  # raises NotFound when it is missing
        if deployment:
            apps.patch_namespaced_deployment(name, namespace, body)
        else:
            apps.patch_namespaced_stateful_set(name, namespace, body)


    def dry_run_replicas(
        self, kind: WorkloadKind, namespace: str, name: str, replicas: int
    ) -> int:
        """A server-side dry run (`dryRun=All`) of setting the replicas through the scale
        subresource: authorization, admission and validation run as for the real change, and
        nothing is stored. Returns the replicas the server answered with."""
        self._admit(kind, namespace, name)
        apps = _apps()
        body = {"spec": {"replicas": replicas}}
        if kind == "Deployment":
            scale = apps.patch_namespaced_deployment_scale(name, namespace, body, dry_run="All")
        else:
            scale = apps.patch_namespaced_stateful_set_scale(name, namespace, body, dry_run="All")
        answered = scale.spec.replicas if scale.spec is not None else None
        return int(answered if answered is not None else replicas)


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


def job_manifest(
    name: str, spec: Mapping[str, Any], owner: Mapping[str, Any], transition_id: str | None
) -> dict[str, Any]:
    """The Job of a `job` step (pure): the user's JobSpec as given, owned by the plan (so it
    goes when the plan goes) and labelled with plan and transition for `kubectl get -l`."""
    meta = owner["metadata"]
    labels = {PLAN_LABEL: meta["name"]}
    if transition_id:
        labels[TRANSITION_LABEL] = transition_id
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(dict(owner))],
        },
        "spec": dict(spec),
    }


class PlanJobs:
    """`JobLauncher` creating the Jobs of one plan's `job` steps, owned by the plan. The
    name comes from the step (plan, transition id, step), so create-or-get is idempotent.
    `admit` (the operator passes its image and ServiceAccount rule) raises for a JobSpec
    that may not run; it is called right before every create."""

    def __init__(
        self,
        owner: Mapping[str, Any],
        transition_id: str | None = None,
        admit: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.owner = owner
        self.transition_id = transition_id
        self.admit = admit

    def ensure_job(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        if namespace != self.owner["metadata"]["namespace"]:
            raise NamespaceNotAllowed(
                f"Job {namespace}/{name} is outside the plan's namespace "
                f"{self.owner['metadata']['namespace']}"
            )
        if self.admit is not None:
            self.admit(spec)
        objects.create_job(namespace, job_manifest(name, spec, self.owner, self.transition_id))

    def job_state(self, namespace: str, name: str) -> JobState:
        return job_state_of(objects.get_job(namespace, name))

