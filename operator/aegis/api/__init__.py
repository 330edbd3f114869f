"""The Aegis API: one module per kind, plus the registry every other layer reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from aegis import GROUP, VERSION
from aegis.api.backuppolicy import BackupPolicySpec, BackupPolicyStatus
from aegis.api.drdrill import DRDrillSpec, DRDrillStatus
from aegis.api.failoverapproval import FailoverApprovalSpec, FailoverApprovalStatus
from aegis.api.failoverplan import FailoverPlanSpec, FailoverPlanStatus
from aegis.api.recoverypoint import RecoveryPointSpec, RecoveryPointStatus
from aegis.api.restore import RestoreSpec, RestoreStatus


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0


def condition_path(condition: str, field: str = "status") -> str:
    return f'.status.conditions[?(@.type=="{condition}")].{field}'


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_name: str
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    # The condition that says whether the spec was taken: Ready for long-lived kinds,
    # Accepted for one-shot kinds (whose Complete/Failed conditions report the outcome).
    acceptance_condition: Literal["Ready", "Accepted"]
    columns: tuple[PrinterColumn, ...]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{VERSION}"


BACKUP_POLICY = Kind(
    kind="BackupPolicy",
    plural="backuppolicies",
    singular="backuppolicy",
    short_name="bp",
    spec=BackupPolicySpec,
    status=BackupPolicyStatus,
    description="What to back up (a PostgreSQL database or a Redis server), when, where, how, "
    "for how long, and the RPO the team promises.",
    acceptance_condition="Ready",
    columns=(
        PrinterColumn("Schedule", ".spec.schedule"),
        PrinterColumn("Suspended", ".spec.suspend", "boolean"),
        PrinterColumn("Last Success", ".status.lastSuccessfulTime", "date"),
        PrinterColumn("Next", ".status.nextScheduleTime", description="Next run (RFC 3339)"),
        PrinterColumn("RPO", ".status.display.rpo", description="Current RPO: age of newest data"),
        PrinterColumn("Ready", condition_path("Ready")),
        PrinterColumn("Last Drill", ".status.lastDrill.result"),
        PrinterColumn("Reason", condition_path("Ready", "reason"), priority=1),
        PrinterColumn(
            "Drill RTO",
            ".status.lastDrill.display.rto",
            description="Measured RTO of the last drill",
            priority=1,
        ),
        AGE,
    ),
)

RECOVERY_POINT = Kind(
    kind="RecoveryPoint",
    plural="recoverypoints",
    singular="recoverypoint",
    short_name="rp",
    spec=RecoveryPointSpec,
    status=RecoveryPointStatus,
    description="One backup and the evidence that it is good: location, sizes, SHA-256, key id, "
    "source time and verification.",
    acceptance_condition="Accepted",
    columns=(
        PrinterColumn("Policy", ".spec.policyRef.name"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Size", ".status.display.size", description="Stored size"),
        PrinterColumn("Age Of Data", ".status.sourceTime", "date", "Time of the source snapshot"),
        PrinterColumn("Verified", condition_path("Verified")),
        PrinterColumn("Location", ".status.location", priority=1),
        AGE,
    ),
)

RESTORE = Kind(
    kind="Restore",
    plural="restores",
    singular="restore",
    short_name="rst",
    spec=RestoreSpec,
    status=RestoreStatus,
    description="A request to restore one RecoveryPoint (or a policy's newest good one) into a "
    "database, with verification.",
    acceptance_condition="Accepted",
    columns=(
        PrinterColumn("Point", ".status.recoveryPoint"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Duration", ".status.display.duration", description="Measured duration"),
        PrinterColumn("Message", ".status.message", priority=1),
        AGE,
    ),
)

FAILOVER_PLAN = Kind(
    kind="FailoverPlan",
    plural="failoverplans",
    singular="failoverplan",
    short_name="fp",
    spec=FailoverPlanSpec,
    status=FailoverPlanStatus,
    description="Health checks of a primary and a secondary site, the failover decision rules and "
    "the ordered failover and failback steps.",
    acceptance_condition="Ready",
    columns=(
        PrinterColumn("Mode", ".spec.mode"),
        PrinterColumn("Active", ".status.activeSite"),
        PrinterColumn("State", ".status.state"),
        PrinterColumn("Primary", condition_path("PrimaryHealthy")),
        PrinterColumn("Secondary", condition_path("SecondaryHealthy")),
        PrinterColumn("Last Failover", ".status.lastTransition.completionTime", "date"),
        AGE,
    ),
)

DR_DRILL = Kind(
    kind="DRDrill",
    plural="drdrills",
    singular="drdrill",
    short_name="drill",
    spec=DRDrillSpec,
    status=DRDrillStatus,
    description="A one-off or scheduled rehearsal of a restore or a failover that measures RTO and "
    "RPO against objectives.",
    acceptance_condition="Ready",
    columns=(
        PrinterColumn("Type", ".spec.type"),
        PrinterColumn("Schedule", ".spec.schedule"),
        PrinterColumn("Last Result", ".status.lastRun.result"),
        PrinterColumn("RTO", ".status.lastRun.display.rto", description="Measured RTO"),
        PrinterColumn("RPO", ".status.lastRun.display.rpo", description="Measured RPO"),
        PrinterColumn("Next", ".status.nextRunTime", description="Next run (RFC 3339)"),
        AGE,
    ),
)

FAILOVER_APPROVAL = Kind(
    kind="FailoverApproval",
    plural="failoverapprovals",
    singular="failoverapproval",
    short_name="fa",
    spec=FailoverApprovalSpec,
    status=FailoverApprovalStatus,
    description="A human decision that a FailoverPlan acts on once: fail over (approve, force, "
    "accept data loss) or fail back. Creating one is a separate RBAC permission from editing "
    "the plan.",
    acceptance_condition="Accepted",
    columns=(
        PrinterColumn("Plan", ".spec.planName"),
        PrinterColumn("Action", ".spec.action"),
        PrinterColumn("State", ".status.state"),
        PrinterColumn("Transition", ".status.transitionId", priority=1),
        PrinterColumn("Message", ".status.message", priority=1),
        AGE,
    ),
)

KINDS: tuple[Kind, ...] = (
    BACKUP_POLICY, RECOVERY_POINT, RESTORE, FAILOVER_PLAN, DR_DRILL, FAILOVER_APPROVAL,
)
KINDS_BY_NAME = {k.kind: k for k in KINDS}
KINDS_BY_PLURAL = {k.plural: k for k in KINDS}
CATEGORY = "dr"
VERSION_NAME = VERSION
