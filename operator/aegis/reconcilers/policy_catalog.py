"""Catalog sync: rebuild a policy's RecoveryPoints from the manifests in its bucket (a new
cluster pointed at an old bucket, a DR cluster applied from the same Git repository).

Each manifest the cluster does not know becomes an `Imported` point marked as catalog sync's
(`ownership.CATALOG_SYNC`), its status the manifest's evidence. An Imported point of ours
whose status was never written (the operator stopped between create and status) gets it at
the next sync, so no Imported point stays without evidence.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aegis.agent.manifest import Manifest, ManifestError
from aegis.api import RECOVERY_POINT
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.reconcilers import backup, naming, ownership, tenancy
from aegis.reconcilers.conditions import ConditionUpdate, set_conditions
from aegis.reconcilers.policy_ports import Body, PolicyCluster, PolicyStore, StoreProblem


def imported_status(manifest: Manifest, point: Body, now: dt.datetime) -> dict[str, Any]:
    """The status of a point rebuilt from `manifest` (pure)."""
    message = f"imported from {manifest.manifest}"
    status = {**backup.point_status(manifest), "phase": "Completed", "message": message}
    status["conditions"] = set_conditions(
        (point.get("status") or {}).get("conditions"),
        [
            ConditionUpdate("Accepted", "True", "Imported", message),
            ConditionUpdate("Complete", "True", "Imported", message),
        ],
        generation=point["metadata"].get("generation"),
        now=now,
    )
    return status


def catalog_sync(
    cluster: PolicyCluster,
    store: PolicyStore,
    body: Body,
    spec: BackupPolicySpec,
    now: dt.datetime,
) -> list[str]:
    """Import every manifest of this policy the cluster does not know; return their names.
    Raises StoreProblem when the bucket cannot be listed."""
    meta = body["metadata"]
    namespace, policy = meta["namespace"], meta["name"]
    known = {p["metadata"]["name"]: p for p in cluster.list_points(namespace, policy, cached=False)}
    imported = []
    for key in store.list_manifest_keys(spec.storage, namespace, policy):
        name = key.rsplit("/", 2)[-2]
        existing = known.get(name)
        if existing is not None and not _lacks_evidence(existing):
            continue
        try:
            manifest = store.read_manifest(spec.storage, namespace, key)
        except (StoreProblem, ManifestError):
            continue
        if not tenancy.manifest_belongs(manifest, namespace, policy):
            continue  # a manifest naming another namespace or policy imports nothing here
        if existing is None:
            point, created = cluster.create_point(
                namespace,
                {
                    "apiVersion": RECOVERY_POINT.api_version,
                    "kind": RECOVERY_POINT.kind,
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": naming.recovery_point_labels(policy),
                        "annotations": ownership.marks(ownership.CATALOG_SYNC),
                    },
                    "spec": {"policyRef": {"name": policy}, "trigger": "Imported"},
                },
            )
            if not created:
                continue
        else:
            point = existing
        cluster.patch_point_status(namespace, name, imported_status(manifest, point, now))
        imported.append(name)
    return imported


def _lacks_evidence(point: Body) -> bool:
    """An Imported point of catalog sync's whose status was never written."""
    return (
        (point.get("spec") or {}).get("trigger") == "Imported"
        and ownership.created_by(point) == ownership.CATALOG_SYNC
        and not (point.get("status") or {}).get("manifest")
        and not point["metadata"].get("deletionTimestamp")
    )
