"""The BackupPolicy runtime: the one object that holds what the operator remembers about
policies between calls (prepared runs, cursors, verdicts, the inputs of each policy's
conditions), made at start-up and kept in kopf's memo. Nothing is created at import.

The work itself is split by concern, each module taking its ports and `now`:

- `policy_references`: can the policy back up (Secrets, keys, bucket, source)?
- `policy_status`: counts, RPO, retention, and the conditions, in one status patch.
- `policy_tick`: plan → prepare → fire → Job, and settling the scheduler's unstarted points.
- `policy_catalog`: rebuild points from the manifests in the bucket.

Two clocks drive it, both Schedulers the handlers start: `tick` at each policy's due times,
and `maintain` every `reference_check_seconds` (references, then status and catalog sync
when they are due, or at once when a tick or a finished backup asks for it).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Protocol

from aegis import metrics
from aegis.agent.manifest import ManifestError
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.k8s.cache import PointCache, SecretCache
from aegis.k8s.jobs import build_job
from aegis.reconcilers import (
    backup,
    keys,
    policy_catalog,
    policy_references,
    policy_status,
    policy_tick,
    tenancy,
)
from aegis.reconcilers.backup import parse_time
from aegis.reconcilers.conditions import ConditionUpdate, iso
from aegis.reconcilers.policy_ports import (
    Body,
    Clock,
    PointRunner,
    PolicyCluster,
    PolicyStore,
    Problem,
    Reach,
    StoreProblem,
)
from aegis.reconcilers.validation import SpecError, parse_spec
from aegis.settings import Settings

logger = logging.getLogger("aegis.backuppolicy")


class Waker(Protocol):
    def wake(self, namespace: str, name: str, at: dt.datetime | None = None) -> None: ...

    def forget(self, namespace: str, name: str) -> None: ...

    def nudge(self) -> None: ...

    def stop(self) -> None: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class PolicyRuntime:
    """Made once per operator process by the startup handler."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        cluster: PolicyCluster,
        store: PolicyStore,
        runner: PointRunner,
        reach: Reach,
        objects_cache: PointCache,
        secrets: SecretCache,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.cluster = cluster
        self.store = store
        self.runner = runner
        self.reach = reach
        self.objects_cache = objects_cache
        self.secrets = secrets
        self.verdicts = policy_references.Verdicts(settings.reference_check_seconds)
        self.ticks = policy_tick.TickState()
        self.tick_ports = policy_tick.TickPorts(
            cluster=cluster,
            runner=runner,
            check=self._check,
            build_job=self._build_job,
            spec_of=self.spec_of,
            notify=self.request_status,
            prepare_seconds=float(settings.prepare_seconds),
            clock=self.now,
        )
        self.tick_waker: Waker | None = None
        self.maintenance_waker: Waker | None = None
        self._lock = threading.Lock()
        # Per policy: when each periodic job is next due, and whether a status write was asked.
        self._due: dict[tuple[str, str], dict[str, dt.datetime]] = {}
        self._status_asked: set[tuple[str, str]] = set()
        self._recheck: set[tuple[str, str]] = set()
        self._listed: set[tuple[str, str]] = set()

    def now(self) -> dt.datetime:
        """The runtime's clock (replaceable: `self.clock` may be swapped, then `clock_moved`)."""
        return self.clock.now()

    # --- wiring -------------------------------------------------------------------------

    def attach(self, tick_waker: Waker, maintenance_waker: Waker) -> None:
        self.tick_waker, self.maintenance_waker = tick_waker, maintenance_waker

    def spec_changed(self, namespace: str, name: str) -> None:
        """A policy was created, changed or seen at start-up: plan and check it now."""
        self.ticks.drop_prepared((namespace, name))
        with self._lock:
            self._due.pop((namespace, name), None)
        if self.tick_waker is not None:
            self.tick_waker.wake(namespace, name)
        if self.maintenance_waker is not None:
            self.maintenance_waker.wake(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        for waker in (self.tick_waker, self.maintenance_waker):
            if waker is not None:
                waker.forget(namespace, name)
        self.ticks.forget(key)
        self.ticks.references.pop(key, None)
        with self._lock:
            self._due.pop(key, None)
            self._status_asked.discard(key)
            self._recheck.discard(key)
            self._listed.discard(key)
        metrics.forget_policy(namespace, name)

    def secret_changed(self, event_type: str | None, body: Body) -> None:
        """Feed the Secret cache; a policy naming a changed, new or deleted Secret has its
        references re-checked now rather than at the end of its period (not on a watch's
        re-list, which repeats a version already seen)."""
        if not self.secrets.event(event_type, body):
            return
        meta = body.get("metadata") or {}
        namespace, secret = meta.get("namespace", ""), meta.get("name", "")
        for policy in self.objects_cache.policies_in(namespace):
            if secret in policy_references.secret_names(policy.get("spec") or {}):
                name = policy["metadata"]["name"]
                with self._lock:
                    self._recheck.add((namespace, name))
                if self.maintenance_waker is not None:
                    self.maintenance_waker.wake(namespace, name)

    def request_status(self, namespace: str, name: str) -> None:
        """Write the policy's status soon (a condition's input changed, a run ended)."""
        with self._lock:
            self._status_asked.add((namespace, name))
        if self.maintenance_waker is not None:
            self.maintenance_waker.wake(namespace, name)

    def run_ended(self, namespace: str, name: str) -> None:
        """A run of the policy ended: refresh its status, and re-plan (a tick held back by
        Forbid may start now)."""
        self.request_status(namespace, name)
        if self.tick_waker is not None:
            self.tick_waker.wake(namespace, name)

    def clock_moved(self) -> None:
        """An injected clock jumped: both schedulers look at it again now."""
        for waker in (self.tick_waker, self.maintenance_waker):
            if waker is not None:
                waker.nudge()

    def stop(self) -> None:
        for waker in (self.tick_waker, self.maintenance_waker):
            if waker is not None:
                waker.stop()
        self.ticks.shutdown()

    # --- ports the tick uses -----------------------------------------------------------

    def _check(self, spec: BackupPolicySpec, namespace: str) -> Problem | None:
        return policy_references.check_references(
            spec,
            namespace,
            cluster=self.cluster,
            store=self.store,
            reach=self.reach,
            verdicts=self.verdicts,
            now=self.now(),
        )

    def spec_of(self, body: Body) -> BackupPolicySpec | None:
        """The policy's spec when the handler accepts it (parsed, and reaching nothing outside
        its namespace that the settings do not open); None otherwise, which the handler
        reports as Ready=False. The same rule as `handlers.common.accept`, so the status
        writer never calls Ready what the handler refused."""
        meta = body.get("metadata") or {}
        spec = parse_spec(BackupPolicySpec, body.get("spec"))
        if isinstance(spec, SpecError):
            return None
        if tenancy.refusal(spec, meta.get("namespace") or "", self.settings) is not None:
            return None
        assert isinstance(spec, BackupPolicySpec)
        return spec

    def _build_job(self, point: Body, spec: BackupPolicySpec, key_ids: list[str]) -> Body:
        return build_job(backup.backup_job_request(point, spec, key_ids, self.settings))

    # --- the two scheduled acts -------------------------------------------------------

    def tick(self, namespace: str, name: str, now: dt.datetime) -> float | None:
        return policy_tick.tick(self.ticks, self.tick_ports, namespace, name, now)

    def maintain(self, namespace: str, name: str, now: dt.datetime) -> float | None:
        """References every period; status when due or asked; catalog sync when due.
        Returns the seconds until the next of them."""
        key = (namespace, name)
        body = self.cluster.get_policy(namespace, name, cached=True)
        if body is None:
            self.forget(namespace, name)
            return None
        spec = self.spec_of(body)
        if spec is None:
            return None  # the handler reports it as Ready=False; a fixed spec wakes us
        settings = self.settings
        with self._lock:
            due = self._due.setdefault(key, {})
            asked = key in self._status_asked
            self._status_asked.discard(key)
            recheck = key in self._recheck
            self._recheck.discard(key)
        periods = {
            "references": settings.reference_check_seconds,
            "status": settings.status_seconds,
            "catalog": settings.catalog_sync_seconds,
        }
        if recheck or now >= due.get("references", now):
            problem = self._check(spec, namespace)
            due["references"] = now + dt.timedelta(seconds=periods["references"])
            if self.ticks.references.get(key) != problem:
                asked = True
            self.ticks.references[key] = problem
        ready = policy_references.ready_condition(self.ticks.problem(key), spec)
        updates = [ready, keys.escrow_condition(spec.encryption, namespace, name)]
        scheduling = self.ticks.scheduling.get(key)
        if scheduling is not None:
            updates.append(scheduling)
        # RecoveryTested is computed by the refresh; compared here too, so a lastDrill the
        # watch delivered after a drill's request for a refresh is shown at the next round.
        tested = policy_status.recovery_tested_of(body, spec, now)
        if asked or _differs(body, [*updates, tested]) or now >= due.get("status", now):
            due["status"] = now + dt.timedelta(seconds=periods["status"])
            # The first refresh after start-up lists from the API server: the watch cache
            # may not hold every point yet, and a short count would be written as status.
            points = self.cluster.list_points(namespace, name, cached=key in self._listed)
            self._listed.add(key)
            along = self._suspended_cursor(key, body, spec)
            policy_status.refresh(self.cluster, body, spec, points, updates, now, along)
        if now >= due.get("catalog", now + dt.timedelta(seconds=min(10, periods["catalog"]))):
            due["catalog"] = now + dt.timedelta(seconds=periods["catalog"])
            self._catalog(body, spec, now)
        due.setdefault("catalog", now + dt.timedelta(seconds=min(10, periods["catalog"])))
        return max(0.0, (min(due.values()) - now).total_seconds())

    def _suspended_cursor(
        self, key: tuple[str, str], body: Body, spec: BackupPolicySpec
    ) -> dict[str, str]:
        """A suspended policy's cursor, when the tick moved it past the written one (the tick
        writes it only every SUSPENDED_CURSOR_SECONDS): written along with a status write."""
        cursor = self.ticks.cursor.get(key)
        if not spec.suspend or cursor is None:
            return {}
        written = parse_time((body.get("status") or {}).get("handledUntil"))
        if written is not None and written >= cursor:
            return {}
        return {"handledUntil": iso(cursor)}

    def _catalog(self, body: Body, spec: BackupPolicySpec, now: dt.datetime) -> None:
        meta = body["metadata"]
        try:
            imported = policy_catalog.catalog_sync(self.cluster, self.store, body, spec, now)
        except (StoreProblem, ManifestError) as problem:
            logger.warning(
                "Catalog sync of %s/%s postponed: %s", meta["namespace"], meta["name"], problem
            )
            return
        if imported:
            logger.info(
                "Imported %d recovery point(s) of %s/%s from the bucket: %s",
                len(imported),
                meta["namespace"],
                meta["name"],
                ", ".join(imported),
            )
            self.request_status(meta["namespace"], meta["name"])


def _differs(body: Body, updates: list[ConditionUpdate]) -> bool:
    """True when a condition would change (status, reason or message)."""
    current = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
    for update in updates:
        found = current.get(update.type)
        if found is None or (found.get("status"), found.get("reason"), found.get("message")) != (
            update.status,
            update.reason,
            update.message,
        ):
            return True
    return False


def make_runtime(
    settings: Settings,
    clock: Clock | None = None,
    *,
    objects_cache: PointCache,
    secrets: SecretCache | None = None,
) -> PolicyRuntime:
    """The production runtime: API server, S3 and TCP behind the ports."""
    from aegis.reconcilers.policy_io import KubeCluster, PointReconciler, S3Store, TcpReach

    secrets = secrets if secrets is not None else SecretCache()
    cluster = KubeCluster(objects_cache, secrets)
    return PolicyRuntime(
        settings,
        clock=clock or SystemClock(),
        cluster=cluster,
        store=S3Store(cluster, settings),
        # The points' own times (start, completion) are the wall clock's, even when a test
        # moves the schedulers' clock.
        runner=PointReconciler(settings, lambda: dt.datetime.now(dt.UTC)),
        reach=TcpReach(settings.connect_timeout_seconds),
        objects_cache=objects_cache,
        secrets=secrets,
    )
