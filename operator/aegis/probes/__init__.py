"""Health checks of FailoverPlan sites, run in the operator.

    from aegis.probes import Prober, ProbeContext
    prober = Prober(max_workers=32)                        # one per process
    ctx = ProbeContext(namespace, secrets=..., workloads=...)  # ports the operator implements
    probes = prober.probe_sites({"primary": spec.primary, "secondary": spec.secondary}, ctx)

Each `SiteProbe` holds one `CheckResult(name, ok, latency_ms, message)` per check; checks
never raise and never hold the caller beyond `timeoutSeconds` (+0.5 s grace). What a probe
attempt means for the site's health (thresholds, weights) is decided by the pure state
machine in `aegis.reconcilers.failover`.
"""

from aegis.probes.base import CheckResult, SecretReader, scrub
from aegis.probes.postgres import PgEndpoint, pg_connect
from aegis.probes.prober import ProbeContext, Prober, SiteProbe, run_check
from aegis.probes.workload import WorkloadKind, WorkloadReader, WorkloadReplicas

__all__ = [
    "CheckResult",
    "PgEndpoint",
    "ProbeContext",
    "Prober",
    "SecretReader",
    "SiteProbe",
    "WorkloadKind",
    "WorkloadReader",
    "WorkloadReplicas",
    "pg_connect",
    "run_check",
    "scrub",
]
