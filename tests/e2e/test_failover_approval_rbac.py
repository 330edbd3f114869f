"""Approval is a permission RBAC can separate from editing a plan: the chart's approver
ClusterRole lets a person create FailoverApprovals; someone who may edit FailoverPlans (the
built-in `edit` role's reach over dr.aegis.dev, minus that role) cannot approve, force or
accept data loss, and reads no approval token from the plan. Checked with real identities
(ServiceAccount tokens) against the emulator's RBAC, which is as strict as kube-apiserver's."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.contract.auth_helpers import binding, grant, service_account
from tests.e2e.helpers import CHART, GROUP, RELEASE, RELEASE_NAMESPACE, VERSION, pinned_helm

PLAN_EDITOR_RULES = [
    {"apiGroups": [GROUP], "verbs": ["get", "list", "watch", "create", "update", "patch",
                                     "delete"],
     "resources": ["failoverplans", "backuppolicies", "recoverypoints", "restores",
                   "drdrills"]},
]


def approver_cluster_role() -> dict[str, Any]:
    result = subprocess.run(
        [str(pinned_helm()), "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
         "--set", "rbac.failoverApproverRole=true", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    roles = [d for d in yaml.safe_load_all(result.stdout)
             if d and d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("approver")]
    assert len(roles) == 1, "the chart renders no failover approver ClusterRole"
    return roles[0]


def approval(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FailoverApproval",
            "metadata": {"name": name},
            "spec": {"planName": "orders", "action": "Failover", "reason": "drill", **spec}}


def test_a_plan_editor_cannot_approve_and_an_approver_can(k8s_api: Any, namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    approver_role = approver_cluster_role()
    name = f"{approver_role['metadata']['name']}-{namespace}"[:63]
    approver_role["metadata"] = {"name": name}
    rbac.create_cluster_role(approver_role)
    try:
        editor = service_account(k8s_api, namespace, "plan-editor")
        approver = service_account(k8s_api, namespace, "approver")
        grant(k8s_api, editor, PLAN_EDITOR_RULES, name="plan-editor")
        rbac.create_namespaced_role_binding(
            namespace, binding("approver", name, approver, role_kind="ClusterRole"))
        as_editor = client.CustomObjectsApi(editor.api)
        as_approver = client.CustomObjectsApi(approver.api)

        # The editor may edit plans…
        as_editor.list_namespaced_custom_object(GROUP, VERSION, namespace, "failoverplans")
        # …but neither approve, nor force, nor accept data loss.
        for spec in ({}, {"force": True}, {"acceptDataLoss": "restore the site"}):
            with pytest.raises(ApiException) as refused:
                as_editor.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "failoverapprovals", approval("by-editor", **spec))
            assert refused.value.status == 403
            message = json.loads(refused.value.body)["message"]
            assert (f'User "{editor.user}" cannot create resource "failoverapprovals" in API '
                    f'group "{GROUP}"') in message

        created = None
        for _ in range(50):  # a real server's authorizer reads an informer cache
            try:
                created = as_approver.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "failoverapprovals", approval("by-approver"))
                break
            except ApiException as exc:
                if exc.status != 403:
                    raise
                time.sleep(0.1)
        assert created is not None and created["metadata"]["name"] == "by-approver"
        # The approver cannot edit the plan itself: the two permissions are apart both ways.
        with pytest.raises(ApiException) as cannot_edit:
            as_approver.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "failoverplans", "orders",
                {"metadata": {"annotations": {"x": "y"}}})
        assert cannot_edit.value.status == 403
        editor.api.close()
        approver.api.close()
    finally:
        rbac.delete_cluster_role(name)
