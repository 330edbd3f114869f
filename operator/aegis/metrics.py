"""Every Prometheus metric the operator exports, defined in one place.

Labels are namespace and object name (policy, plan, drill) only: never anything from a
Secret, and nothing unbounded such as error messages.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

RESOURCE_READY = Gauge(
    "aegis_resource_ready",
    "1 when the resource's spec is accepted and its Ready/Accepted condition is True, else 0.",
    ["kind", "namespace", "name"],
)
INVALID_SPECS = Counter(
    "aegis_invalid_spec_total",
    "Specs refused by the operator (reported as Ready/Accepted=False), by kind.",
    ["kind", "namespace"],
)

# Backups (BackupPolicy / RecoveryPoint).
BACKUP_LAST_SUCCESS = Gauge(
    "aegis_backup_last_success_timestamp_seconds",
    "Completion time of the newest Completed recovery point, as a Unix timestamp.",
    ["namespace", "policy"],
)
BACKUP_DURATION = Histogram(
    "aegis_backup_duration_seconds",
    "Measured duration of backups, from Job start to completion.",
    ["namespace", "policy"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
BACKUP_SIZE = Gauge(
    "aegis_backup_size_bytes",
    "Stored (compressed, encrypted) size of the newest Completed recovery point.",
    ["namespace", "policy"],
)
BACKUP_FAILURES = Counter(
    "aegis_backup_failures_total",
    "Backups that ended Failed or Corrupted.",
    ["namespace", "policy"],
)
RPO = Gauge(
    "aegis_rpo_seconds",
    "Current RPO: now minus the source time of the newest Completed recovery point.",
    ["namespace", "policy"],
)
RPO_OBJECTIVE = Gauge(
    "aegis_rpo_objective_seconds",
    "The policy's RPO objective (spec.objectives.rpoSeconds).",
    ["namespace", "policy"],
)
RECOVERY_POINTS = Gauge(
    "aegis_recovery_points",
    "Number of recovery points of a policy.",
    ["namespace", "policy"],
)

# Restores.
RESTORE_DURATION = Histogram(
    "aegis_restore_duration_seconds",
    "Measured duration of restores.",
    ["namespace"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
RESTORE_FAILURES = Counter(
    "aegis_restore_failures_total", "Restores that ended Failed.", ["namespace"]
)

# Failover.
SITE_HEALTHY = Gauge(
    "aegis_site_healthy", "1 when the site counts as up.", ["namespace", "plan", "site"]
)
PROBE_LATENCY = Histogram(
    "aegis_probe_latency_seconds",
    "Measured latency of health checks.",
    ["namespace", "plan", "site"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FAILOVER_TOTAL = Counter(
    "aegis_failover_total",
    "Failovers and failbacks executed.",
    ["namespace", "plan", "kind", "result"],
)
FAILOVER_DURATION = Histogram(
    "aegis_failover_duration_seconds",
    "Measured duration of failover and failback procedures.",
    ["namespace", "plan", "kind"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
FAILOVER_STATE = Gauge(
    "aegis_failover_state",
    "1 for the plan's current state, 0 for the others.",
    ["namespace", "plan", "state"],
)

_server_lock = threading.Lock()
_server_port: int | None = None


def serve(port: int, address: str = "0.0.0.0") -> int | None:
    """Serve /metrics on `port` once per process; 0 disables it. Returns the port served."""
    global _server_port
    with _server_lock:
        if port and _server_port is None:
            start_http_server(port, addr=address, registry=REGISTRY)
            _server_port = port
        return _server_port
