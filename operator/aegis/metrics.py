"""Every Prometheus metric the operator exports, defined in one place.

Labels are namespace, object name (policy, plan, drill) and fixed enums (phase, state,
result) only: never anything from a Secret, and nothing unbounded such as error messages.

The alerts of charts/aegis/templates/prometheusrule.yaml read these series; what they mean to
an operator on call is in docs/runbooks.md.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
#
# Every per-policy series is created when the operator first sees the policy (policy_seen),
# so a counter's first increment after an operator restart is a visible 0 -> 1 step that
# `increase()` counts, and absent series never hide a policy that has never backed up.
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
COPY_FAILURES = Counter(
    "aegis_copy_failures_total",
    "Copies of a backup to a further bucket (spec.copies) that ended Failed.",
    ["namespace", "policy"],
)
VERIFICATION_FAILURES = Counter(
    "aegis_verification_failures_total",
    "Verifications of a recovery point (restore, drill or periodic check) that failed.",
    ["namespace", "policy"],
)
RPO_OBJECTIVE = Gauge(
    "aegis_rpo_objective_seconds",
    "The policy's RPO objective (spec.objectives.rpoSeconds).",
    ["namespace", "policy"],
)
POINT_PHASES = ("Pending", "Running", "Completed", "Failed", "Corrupted", "Expired")
RECOVERY_POINTS = Gauge(
    "aegis_recovery_points",
    'Recovery points of a policy by phase; only phase="Completed" ones can be restored. '
    "A point without a phase yet counts as Pending.",
    ["namespace", "policy", "phase"],
)


class RpoCollector(Collector):
    """`aegis_rpo_seconds`: now minus the source time of the policy's newest Completed point,
    or minus the policy's creation time while it has none (its data-loss window is then
    everything since it was created).

    Computed at scrape time from the reference time rather than stored as a gauge, so the
    value keeps growing when the status refresh that records new points stalls (a bucket
    outage, a wedged policy): the RPO alert must fire exactly then."""

    NAME = "aegis_rpo_seconds"
    HELP = (
        "Current RPO: now minus the source time of the newest Completed recovery point, or "
        "minus the policy's creation time when it has none."
    )

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._since: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def since(self, namespace: str, policy: str) -> float | None:
        with self._lock:
            return self._since.get((namespace, policy))

    def set_since(self, namespace: str, policy: str, timestamp: float) -> None:
        with self._lock:
            self._since[(namespace, policy)] = timestamp

    def forget(self, namespace: str, policy: str) -> None:
        with self._lock:
            self._since.pop((namespace, policy), None)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["namespace", "policy"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["namespace", "policy"])
        now = self._clock()
        with self._lock:
            items = sorted(self._since.items())
        for (namespace, policy), since in items:
            family.add_metric([namespace, policy], max(0.0, now - since))
        yield family


RPO = RpoCollector()
REGISTRY.register(RPO)

# Restores.
RESTORE_DURATION = Histogram(
    "aegis_restore_duration_seconds",
    "Measured duration of restores.",
    ["namespace"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
# Namespace only: a Restore refused before it resolves a point has no policy.
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

# --- Failover safety (issue 13): replication lag and blocked failovers. ---------------
REPLICATION_LAG_BYTES = Gauge(
    "aegis_replication_lag_bytes",
    "Bytes the site's replica lacks of the serving site's last observed position.",
    ["namespace", "plan", "site"],
)
REPLICATION_LAG_SECONDS = Gauge(
    "aegis_replication_lag_seconds",
    "Data-loss window of promoting the site's replica now, in seconds.",
    ["namespace", "plan", "site"],
)
REPLICATION_STALE = Gauge(
    "aegis_replication_stale",
    "1 when the site's replica lags beyond the plan's maxLagBytes/maxLagSeconds or its lag "
    "is unknown.",
    ["namespace", "plan", "site"],
)
FAILOVER_BLOCKED = Gauge(
    "aegis_failover_blocked",
    "1 while the primary is down and failover is blocked because the secondary is stale.",
    ["namespace", "plan"],
)
# --- end failover safety ---------------------------------------------------------------

# --- Drills (DRDrill) ---------------------------------------------------------------------
# Owned by the drill reconciler (reconcilers/drdrill.py); kept apart from the backup block.
DRILL_LAST_RTO = Gauge(
    "aegis_drill_last_rto_seconds",
    "Measured RTO of the drill's last finished run: run start to the checks passing.",
    ["namespace", "drill"],
)
DRILL_LAST_RPO = Gauge(
    "aegis_drill_last_rpo_seconds",
    "Measured RPO of the drill's last finished run: run start minus the point's source time.",
    ["namespace", "drill"],
)
DRILL_RTO_OBJECTIVE = Gauge(
    "aegis_drill_rto_objective_seconds",
    "The drill's RTO objective (spec.objectives.rtoSeconds).",
    ["namespace", "drill"],
)
DRILL_RPO_OBJECTIVE = Gauge(
    "aegis_drill_rpo_objective_seconds",
    "The drill's RPO objective (spec.objectives.rpoSeconds).",
    ["namespace", "drill"],
)
DRILL_LAST_SUCCESS = Gauge(
    "aegis_drill_last_success_timestamp_seconds",
    "Completion time of the drill's newest passed run, as a Unix timestamp.",
    ["namespace", "drill"],
)
DRILL_LAST_PASSED = Gauge(
    "aegis_drill_last_passed",
    "1 when the drill's last finished run passed, 0 when it failed.",
    ["namespace", "drill"],
)
DRILL_INTERVAL = Gauge(
    "aegis_drill_interval_seconds",
    "Seconds between two runs of a scheduled drill (absent for a run-once drill).",
    ["namespace", "drill"],
)
DRILL_CREATED = Gauge(
    "aegis_drill_created_timestamp_seconds",
    "Creation time of the drill: an overdue drill that never passed counts from it.",
    ["namespace", "drill"],
)
DRILL_RUNS = Counter(
    "aegis_drill_runs_total",
    "Finished drill runs, by result (Passed or Failed) and reason.",
    ["namespace", "drill", "result", "reason"],
)
# --- end of drills -------------------------------------------------------------------------

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


# --- per-policy series: the functions the policy and point code call ------------------------

_POLICY_COUNTERS = (BACKUP_FAILURES, COPY_FAILURES, VERIFICATION_FAILURES)


def _time(value: object) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


def _objective(policy: Mapping[str, Any]) -> int | None:
    objectives = (policy.get("spec") or {}).get("objectives") or {}
    value = objectives.get("rpoSeconds")
    # The raw spec may not have been validated yet (policy_seen runs first): no bool, no text.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def policy_seen(policy: Mapping[str, Any]) -> None:
    """Create the series of a BackupPolicy (its body) the first time the operator sees it,
    valid spec or not: failure counters at 0, point counts at 0, the RPO counting from the
    policy's creation until a Completed point is known. Idempotent: never lowers a counter
    nor overwrites a known RPO reference."""
    meta = policy.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta.get("name") or ""
    for counter in _POLICY_COUNTERS:
        counter.labels(namespace, name)
    # Restores are namespaced and their policy may be unknown; the namespace has a policy.
    RESTORE_FAILURES.labels(namespace)
    for phase in POINT_PHASES:
        RECOVERY_POINTS.labels(namespace, name, phase)
    created = _time(meta.get("creationTimestamp"))
    if created is not None and RPO.since(namespace, name) is None:
        RPO.set_since(namespace, name, created.timestamp())
    objective = _objective(policy)
    if objective is not None:
        RPO_OBJECTIVE.labels(namespace, name).set(objective)


def export_policy(policy: Mapping[str, Any], points: list[dict[str, Any]]) -> None:
    """Set a policy's gauges from its RecoveryPoints (the evidence): counts by phase, the RPO
    reference (newest Completed point's source time, else the policy's creation), the
    objective, and the newest Completed point's completion time and size."""
    policy_seen(policy)
    meta = policy.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta.get("name") or ""
    statuses = [p.get("status") or {} for p in points]
    # A point the scheduler created but did not start has no phase yet: it is Pending.
    counts = Tally(s["phase"] if s.get("phase") in POINT_PHASES else "Pending" for s in statuses)
    for phase in POINT_PHASES:
        RECOVERY_POINTS.labels(namespace, name, phase).set(counts[phase])

    completed = [s for s in statuses if s.get("phase") == "Completed"]
    sources = [t for s in completed if (t := _time(s.get("sourceTime")))]
    created = _time(meta.get("creationTimestamp"))
    reference = max(sources) if sources else created
    if reference is not None:
        RPO.set_since(namespace, name, reference.timestamp())

    objective = _objective(policy)
    if objective is None:
        _remove(RPO_OBJECTIVE, namespace, name)

    done = [(t, s) for s in completed if (t := _time(s.get("completionTime")))]
    if done:
        when, newest = max(done, key=lambda ts: ts[0])
        BACKUP_LAST_SUCCESS.labels(namespace, name).set(when.timestamp())
        if isinstance(newest.get("storedBytes"), int):
            BACKUP_SIZE.labels(namespace, name).set(newest["storedBytes"])
    else:
        _remove(BACKUP_LAST_SUCCESS, namespace, name)
        _remove(BACKUP_SIZE, namespace, name)


def copies_ended(namespace: str, policy: str, copies: list[dict[str, Any]] | None) -> None:
    """Count the Failed entries of a point's status.copies (call once per point outcome)."""
    failed = sum(1 for c in copies or [] if c.get("state") == "Failed")
    COPY_FAILURES.labels(namespace, policy).inc(failed)


def verification_ended(namespace: str, policy: str, *, passed: bool) -> None:
    """Record one verification of a point of `policy` (restore, drill or periodic check)."""
    counter = VERIFICATION_FAILURES.labels(namespace, policy)
    if not passed:
        counter.inc()


def forget_policy(namespace: str, policy: str) -> None:
    """Drop every series of a deleted policy (namespace-wide restore failures stay)."""
    for metric in (
        *_POLICY_COUNTERS,
        RPO_OBJECTIVE,
        BACKUP_LAST_SUCCESS,
        BACKUP_SIZE,
        BACKUP_DURATION,
    ):
        _remove(metric, namespace, policy)
    for phase in POINT_PHASES:
        _remove(RECOVERY_POINTS, namespace, policy, phase)
    RPO.forget(namespace, policy)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
