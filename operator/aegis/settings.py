"""Operator settings, from AEGIS_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from aegis.reach import ALLOW_LOOPBACK_ENV, ALLOW_PRIVATE_ENV, EndpointRule


def _list(name: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in os.environ.get(name, "").split(",") if v.strip())


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}={raw!r}: use true or false")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _positive(name: str, default: int) -> int:
    value = _int(name, default)
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the operator process is configured with."""

    namespaces: tuple[str, ...] = ()
    """Watched namespaces; empty watches all (AEGIS_WATCH_NAMESPACES, comma-separated)."""
    agent_image: str = "ghcr.io/aegis-dr/aegis:0.1.0"
    """Image of backup/restore Jobs (AEGIS_AGENT_IMAGE)."""
    metrics_port: int = 8080
    """Port of /metrics (AEGIS_METRICS_PORT); 0 disables it."""
    health_port: int = 8081
    """Port of the liveness endpoint /healthz (AEGIS_HEALTH_PORT); 0 disables it."""
    log_format: Literal["json", "text"] = "json"
    """AEGIS_LOG_FORMAT."""
    log_level: str = "INFO"
    """AEGIS_LOG_LEVEL."""
    agent_command: tuple[str, ...] = ("aegis", "agent")
    """Command that starts the agent inside Jobs (AEGIS_AGENT_COMMAND, space-separated)."""
    catalog_sync_seconds: int = 300
    """Interval of bucket catalog sync (AEGIS_CATALOG_SYNC_SECONDS)."""
    status_seconds: int = 60
    """Interval of policy status refreshes: RPO, counts, retention (AEGIS_STATUS_SECONDS)."""
    metrics_address: str = "0.0.0.0"
    """Address /metrics and /healthz listen on (AEGIS_METRICS_ADDRESS)."""
    s3_endpoint: str | None = None
    """Default S3 endpoint when a policy names none (AEGIS_S3_ENDPOINT); for test stores."""
    kms_endpoint: str | None = None
    """Default KMS endpoint when a policy's KMS key names none (AEGIS_KMS_ENDPOINT); for
    test emulators."""
    reachable_namespaces: tuple[str, ...] = ()
    """Namespaces a FailoverPlan's scale steps and workload checks may name besides its own
    (AEGIS_REACHABLE_NAMESPACES, comma-separated; `*` is every namespace). Empty: only its own."""
    allowed_job_images: tuple[str, ...] = ()
    """Images Jobs may run besides the agent's: `spec.job.image` of policies and restores,
    the containers of FailoverPlan `job` steps (AEGIS_ALLOWED_JOB_IMAGES, comma-separated;
    `registry.example.com/tools/*` matches by prefix). Empty: only AEGIS_AGENT_IMAGE, so no
    `job` step runs."""
    allowed_service_accounts: tuple[str, ...] = ()
    """ServiceAccounts Jobs may run as (`spec.job.serviceAccountName`, a `job` step's
    `serviceAccountName`), in the object's own namespace (AEGIS_ALLOWED_SERVICE_ACCOUNTS,
    comma-separated; `*` is any). Empty: only the namespace's `default`."""
    allow_loopback_endpoints: bool = False
    """Endpoints (S3, HTTP checks, webhooks, Route53) may be loopback addresses
    (AEGIS_ALLOW_LOOPBACK_ENDPOINTS); for the sandbox and tests, never a cluster."""
    allow_private_endpoints: bool = True
    """Endpoints may be private addresses: cluster IPs of in-cluster S3, databases, webhooks
    (AEGIS_ALLOW_PRIVATE_ENDPOINTS). Link-local and metadata addresses are always refused."""
    reference_check_seconds: int = 30
    """Period of the re-check of every policy's references (Secrets, keys, bucket, source
    reachability), Ready or not (AEGIS_REFERENCE_CHECK_SECONDS). A passing bucket or source
    verdict is reused for one period, so a broken reference shows within two periods at
    most; a deleted Secret (seen by the watch) within one."""
    prepare_seconds: int = 30
    """How long before its due time a tick is prepared: its point created, its Job built
    (AEGIS_PREPARE_SECONDS)."""
    tick_workers: int = 32
    """Threads that act on due ticks (AEGIS_TICK_WORKERS)."""
    maintenance_workers: int = 4
    """Threads that refresh policy status, re-check references and sync catalogs
    (AEGIS_MAINTENANCE_WORKERS)."""
    handler_workers: int = 32
    """kopf's thread pool for sync handlers (AEGIS_HANDLER_WORKERS)."""
    kopf_api_concurrency: int = 32
    """kopf's API requests in flight at once, watches not counted once they stream
    (AEGIS_KOPF_API_CONCURRENCY). kopf's own client has no bound: a thousand new objects at a
    tick meant a thousand TLS connections at once, each with a 256 KiB read buffer."""
    failover_status_heartbeat_seconds: int = 60
    """A FailoverPlan's status is written when a site's health, the plan's state or a
    replica's lag band changes, and otherwise at most this often, to show probing goes on
    (AEGIS_FAILOVER_STATUS_HEARTBEAT_SECONDS). Metrics follow every probe."""
    probe_workers: int = 32
    """Threads that run FailoverPlan checks, shared by every plan (AEGIS_PROBE_WORKERS)."""
    failover_workers: int = 64
    """Threads that run FailoverPlan ticks, one per plan at a time; a tick may run a
    procedure for minutes (AEGIS_FAILOVER_WORKERS)."""
    connect_timeout_seconds: float = 3.0
    """Timeout of the TCP reachability check of a policy's source
    (AEGIS_CONNECT_TIMEOUT_SECONDS)."""
    peering: str = ""
    """Name of the ClusterKopfPeering object the replicas elect their leader in
    (AEGIS_PEERING); empty runs standalone: one replica, no election (k8s/peering.py)."""
    peering_lifetime: int = 15
    """Seconds a replica's keep-alive stays valid (AEGIS_PEERING_LIFETIME): the longest a
    killed leader (or a lost node) delays the takeover by another replica. Keep-alives are
    sent 5 to 10 s before it runs out, so shorter means more API writes."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def endpoints(self) -> EndpointRule:
        """The address rule for endpoints named in specs."""
        return EndpointRule(
            allow_loopback=self.allow_loopback_endpoints,
            allow_private=self.allow_private_endpoints,
        )

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        log_format = env.get("AEGIS_LOG_FORMAT", "json")
        if log_format not in ("json", "text"):
            raise ValueError(f"AEGIS_LOG_FORMAT={log_format!r}: use json or text")
        namespaces = tuple(
            n.strip() for n in env.get("AEGIS_WATCH_NAMESPACES", "").split(",") if n.strip()
        )
        command = tuple(env.get("AEGIS_AGENT_COMMAND", "aegis agent").split())
        lifetime = _int("AEGIS_PEERING_LIFETIME", cls.peering_lifetime)
        if lifetime < 3:
            raise ValueError(f"AEGIS_PEERING_LIFETIME={lifetime}: use 3 seconds or more")
        return cls(
            namespaces=namespaces,
            agent_image=env.get("AEGIS_AGENT_IMAGE", cls.agent_image),
            metrics_port=_int("AEGIS_METRICS_PORT", cls.metrics_port),
            health_port=_int("AEGIS_HEALTH_PORT", cls.health_port),
            log_format=log_format,  # type: ignore[arg-type]
            log_level=env.get("AEGIS_LOG_LEVEL", "INFO").upper(),
            agent_command=command,
            catalog_sync_seconds=_int("AEGIS_CATALOG_SYNC_SECONDS", cls.catalog_sync_seconds),
            status_seconds=_int("AEGIS_STATUS_SECONDS", cls.status_seconds),
            metrics_address=env.get("AEGIS_METRICS_ADDRESS") or cls.metrics_address,
            s3_endpoint=env.get("AEGIS_S3_ENDPOINT") or None,
            kms_endpoint=env.get("AEGIS_KMS_ENDPOINT") or None,
            reachable_namespaces=_list("AEGIS_REACHABLE_NAMESPACES"),
            allowed_job_images=_list("AEGIS_ALLOWED_JOB_IMAGES"),
            allowed_service_accounts=_list("AEGIS_ALLOWED_SERVICE_ACCOUNTS"),
            allow_loopback_endpoints=_bool(ALLOW_LOOPBACK_ENV, cls.allow_loopback_endpoints),
            allow_private_endpoints=_bool(ALLOW_PRIVATE_ENV, cls.allow_private_endpoints),
            reference_check_seconds=_positive(
                "AEGIS_REFERENCE_CHECK_SECONDS", cls.reference_check_seconds
            ),
            prepare_seconds=_int("AEGIS_PREPARE_SECONDS", cls.prepare_seconds),
            tick_workers=_positive("AEGIS_TICK_WORKERS", cls.tick_workers),
            maintenance_workers=_positive("AEGIS_MAINTENANCE_WORKERS", cls.maintenance_workers),
            handler_workers=_positive("AEGIS_HANDLER_WORKERS", cls.handler_workers),
            kopf_api_concurrency=_positive("AEGIS_KOPF_API_CONCURRENCY", cls.kopf_api_concurrency),
            failover_status_heartbeat_seconds=_positive(
                "AEGIS_FAILOVER_STATUS_HEARTBEAT_SECONDS", cls.failover_status_heartbeat_seconds
            ),
            probe_workers=_positive("AEGIS_PROBE_WORKERS", cls.probe_workers),
            failover_workers=_positive("AEGIS_FAILOVER_WORKERS", cls.failover_workers),
            connect_timeout_seconds=float(
                _positive("AEGIS_CONNECT_TIMEOUT_SECONDS", int(cls.connect_timeout_seconds))
            ),
            peering=env.get("AEGIS_PEERING", "").strip(),
            peering_lifetime=lifetime,
        )
