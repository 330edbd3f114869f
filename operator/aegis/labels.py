"""Every label, annotation and finalizer name Aegis puts on objects, in one place (as
CloudNativePG's `labels_annotations.go`): a name is defined here once and imported elsewhere.

All live under the API group's domain, so `kubectl get -l` and admission policies can tell
Aegis's marks from anyone else's.
"""

from __future__ import annotations

from typing import Final

from aegis import GROUP

FINALIZER: Final = f"{GROUP}/finalizer"
"""Held by the operator on every object whose deletion has work to do (bucket objects)."""

# ------------------------------------------------------------------ labels
POLICY_LABEL: Final = f"{GROUP}/policy"
"""On RecoveryPoints and Jobs: the BackupPolicy they belong to."""
RECOVERY_POINT_LABEL: Final = f"{GROUP}/recovery-point"
"""On backup Jobs: the RecoveryPoint they produce."""
RESTORE_LABEL: Final = f"{GROUP}/restore"
"""On restore Jobs: the Restore they carry out."""
DRILL_LABEL: Final = f"{GROUP}/drill"
"""On drill Jobs: the DRDrill they run."""
PLAN_LABEL: Final = f"{GROUP}/failoverplan"
"""On FailoverPlan step Jobs: the plan."""
TRANSITION_LABEL: Final = f"{GROUP}/transition"
"""On FailoverPlan step Jobs: the transition id."""

# ------------------------------------------------------------------ annotations
CREATED_BY_ANNOTATION: Final = f"{GROUP}/created-by"
"""On a RecoveryPoint the operator made: `scheduler` (trigger Scheduled) or `catalog-sync`
(trigger Imported). A user's point with those triggers lacks it and is refused."""
PRUNED_ANNOTATION: Final = f"{GROUP}/pruned-by"
"""On a RecoveryPoint deleted by retention: which policy pruned it (so deletion keeps the
bucket objects' fate to the policy's deletionPolicy)."""
RECOVERY_POINT_ANNOTATION: Final = f"{GROUP}/recovery-point"
"""On a Restore: the RecoveryPoint resolved for it."""
APPROVE_ANNOTATION: Final = f"{GROUP}/approve"
"""On a FailoverPlan: approves a recommended failover (value: the approval token). On a Live
failover DRDrill: approves the run awaiting approval (value: status.lastRun.approvalToken)."""
FAILOVER_ANNOTATION: Final = f"{GROUP}/failover"
"""On a FailoverPlan: asks for a manual failover."""
FAILBACK_ANNOTATION: Final = f"{GROUP}/failback"
"""On a FailoverPlan: asks for a failback."""
ACCEPT_DATA_LOSS_ANNOTATION: Final = f"{GROUP}/accept-data-loss"
"""On a FailoverPlan, with the failover or approve annotation: accepts promoting a secondary
that lags beyond the plan's limits (value: the reason, recorded in the transition)."""
RUN_ANNOTATION: Final = f"{GROUP}/run-now"
"""On a DRDrill: each new value runs it once, now (`kubectl aegis drill run`, the Argo CD
action "run-drill")."""
RUN_START_ANNOTATION: Final = f"{GROUP}/run-start"
"""On a drill Job: the run's start to the microsecond (the RTO clock's zero)."""
VERIFY_ANNOTATION: Final = f"{GROUP}/verify"
"""On a RecoveryPoint: a verification request (`kubectl aegis verify`); a new value asks
again. Not a kopf update trigger: kopf leaves annotations under its storage prefix (this
group) out of the diff, so the operator watches for it."""
VERIFY_REQUEST_ANNOTATION: Final = f"{GROUP}/verify-request"
"""On a verify Job: the request it answers."""
