"""The production implementation of the reconcilers' cluster ports, over `aegis.k8s.objects`.

The RecoveryPoint, Restore and FailoverPlan reconcilers name what they need of the API server
as Protocols (`recoverypoint.Cluster`, `restore.Cluster`, `failoverplan.PlanCluster`); the
handlers hand them an `ApiCluster`, unit tests an in-memory class. One class serves all three
so that a reconciler that uses another's functions (a Restore judging its point) passes the
same object on. Reads that find nothing return None rather than raising, so that the
reconcilers need no exception type of this layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from aegis.api import BACKUP_POLICY, FAILOVER_APPROVAL, FAILOVER_PLAN, RECOVERY_POINT, RESTORE
from aegis.k8s import objects
from aegis.k8s.cache import PlanCache, SecretCache
from aegis.k8s.jobs import Termination
from aegis.k8s.workloads import PlanJobs, SecretsOfNamespace, Workloads

Body = dict[str, Any]


class ApiCluster:
    """The real API server. Every call is a blocking API call: use it from threads.

    With `secrets` (the operator's watch-fed SecretCache), Secrets are read through it: a
    FailoverPlan probing every few seconds then costs no Secret GET. With `plans` (the
    operator's watch-fed PlanCache), a plan's tick reads the plan from the watch's copy
    whenever that copy is known to be current (see PlanCache), so a probe round costs no GET."""

    def __init__(self, secrets: SecretCache | None = None, plans: PlanCache | None = None) -> None:
        self._secrets = secrets
        self._plans = plans

    # --- BackupPolicy, RecoveryPoint, Secrets

    def get_policy(self, namespace: str, name: str) -> Body | None:
        try:
            return objects.get_custom(BACKUP_POLICY, namespace, name)
        except objects.NotFound:
            return None

    def get_point(self, namespace: str, name: str) -> Body | None:
        try:
            return objects.get_custom(RECOVERY_POINT, namespace, name)
        except objects.NotFound:
            return None

    def list_points(self, namespace: str) -> list[Body]:
        return objects.list_custom(RECOVERY_POINT, namespace)

    def patch_point_status(self, namespace: str, name: str, status: Body) -> None:
        objects.patch_custom_status(RECOVERY_POINT, namespace, name, status)

    def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's data, or None when it does not exist. Values are secrets."""
        try:
            return objects.read_secret(namespace, name, self._secrets)
        except objects.NotFound:
            return None

    # --- Jobs

    def get_job(self, namespace: str, name: str) -> Body | None:
        return objects.get_job(namespace, name)

    def create_job(self, namespace: str, job: Body) -> tuple[Body, bool]:
        return objects.create_job(namespace, job)

    def termination(self, namespace: str, job_name: str) -> Termination | None:
        return objects.job_termination(namespace, job_name)

    def termination_message(self, namespace: str, job_name: str) -> str | None:
        return objects.job_result_message(namespace, job_name)

    # --- Restore

    def get_restore(self, namespace: str, name: str) -> Body | None:
        try:
            return objects.get_custom(RESTORE, namespace, name)
        except objects.NotFound:
            return None

    def patch_restore_status(self, namespace: str, name: str, status: Body) -> None:
        objects.patch_custom_status(RESTORE, namespace, name, status)

    # --- FailoverPlan, FailoverApproval

    def get_plan(self, namespace: str, name: str) -> Body | None:
        if self._plans is not None:
            cached = self._plans.get(namespace, name)
            if cached is not None:
                return cached
        try:
            body = objects.get_custom(FAILOVER_PLAN, namespace, name)
        except objects.NotFound:
            return None
        if self._plans is not None:
            self._plans.fresh(body)
        return body

    def patch_plan_status(self, namespace: str, name: str, status: Body) -> None:
        self._plan_write(
            namespace,
            name,
            partial(objects.patch_custom_status, FAILOVER_PLAN, namespace, name, status),
        )

    def annotate_plan(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        self._plan_write(
            namespace,
            name,
            partial(objects.annotate_custom, FAILOVER_PLAN, namespace, name, annotations),
        )

    def _plan_write(self, namespace: str, name: str, write: Callable[[], str | None]) -> None:
        try:
            version = write()
        except BaseException:
            if self._plans is not None:  # it may have been written: trust no copy until a GET
                self._plans.wrote(namespace, name, None)
            raise
        if self._plans is not None:
            self._plans.wrote(namespace, name, version)

    def list_approvals(self, namespace: str) -> list[Body]:
        return objects.list_custom(FAILOVER_APPROVAL, namespace)

    def patch_approval_status(self, namespace: str, name: str, status: Body) -> None:
        objects.patch_custom_status(FAILOVER_APPROVAL, namespace, name, status)

    def secret_reader(self, namespace: str) -> SecretsOfNamespace:
        return SecretsOfNamespace(namespace, self._secrets)

    def workloads(self, namespace: str, reachable: Sequence[str]) -> Workloads:
        return Workloads(namespace, reachable)

    def plan_jobs(
        self,
        plan: Mapping[str, Any],
        transition_id: str | None,
        admit: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> PlanJobs:
        return PlanJobs(plan, transition_id, admit=admit)

    # --- events

    def post_event(
        self,
        involved: Body,
        event_type: str,
        reason: str,
        message: str,
        key: str | None = None,
    ) -> None:
        """Best effort; with `key`, told once per object and key (a repeat is a no-op)."""
        objects.post_event(involved, event_type, reason, message, key=key)
