"""Runs the checks of sites in a shared, bounded thread pool with a hard per-check deadline.

A check that outlives `timeoutSeconds` (plus a short grace that lets it report its own
timeout) is abandoned and reported failed; the caller is never held longer, so one hung
server cannot delay the probes of another plan. Every check also bounds its own socket
operations by the same timeout, so an abandoned worker thread comes back soon after.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

from aegis.api.failoverplan import HealthCheck, Site
from aegis.probes.base import CheckResult, SecretReader
from aegis.probes.http import check_http
from aegis.probes.postgres import check_postgres
from aegis.probes.redis import check_redis
from aegis.probes.tcp import check_tcp
from aegis.probes.workload import WorkloadReader, check_workload
from aegis.reach import EndpointRule

# Time a check gets beyond timeoutSeconds to report its own, more precise, failure.
GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class ProbeContext:
    """What checks need from the plan: its namespace and the ports to read Secrets and
    workloads through."""

    namespace: str
    secrets: SecretReader | None = None
    workloads: WorkloadReader | None = None
    endpoints: EndpointRule = field(default_factory=EndpointRule)
    """Addresses HTTP checks may connect to; the operator passes the one its settings make."""


@dataclass(frozen=True)
class SiteProbe:
    """One probe attempt of a site: every check's result, in spec order."""

    site: str
    time: dt.datetime
    """When the attempt started (the time of a failed probe in detectedTime)."""
    results: tuple[CheckResult, ...]

    def result(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.name == name)


def run_check(check: HealthCheck, timeout: float, ctx: ProbeContext) -> CheckResult:
    """Run one check synchronously; never raises."""
    if check.http is not None:
        return check_http(check.name, check.http, ctx.secrets, timeout, ctx.endpoints)
    if check.tcp is not None:
        return check_tcp(check.name, check.tcp, timeout, ctx.endpoints)
    if check.postgres is not None:
        return check_postgres(check.name, check.postgres, ctx.secrets, timeout)
    if check.redis is not None:
        return check_redis(check.name, check.redis, ctx.secrets, timeout)
    if check.workload is not None:
        return check_workload(check.name, check.workload, ctx.workloads, ctx.namespace)
    return CheckResult(check.name, False, 0.0, "the check sets none of http, tcp, postgres, "
                       "redis, workload")


@dataclass
class _Pending:
    site: Site
    started: dt.datetime
    deadline: float
    futures: list[Future[CheckResult]]


class Prober:
    """Probe sites concurrently. Thread-safe; share one per operator process.

    >>> prober = Prober(max_workers=32)
    >>> probes = prober.probe_sites({"primary": spec.primary, "secondary": spec.secondary}, ctx)
    >>> probes["primary"].results
    """

    def __init__(
        self,
        max_workers: int = 32,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="aegis-probe")
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Checks running now, abandoned ones included."""
        with self._lock:
            return self._in_flight

    def probe_site(self, site: Site, ctx: ProbeContext) -> SiteProbe:
        return self._collect(self._submit(site, ctx))

    def probe_sites(self, sites: Mapping[str, Site], ctx: ProbeContext) -> dict[str, SiteProbe]:
        """Probe several sites at once (all their checks in parallel), keyed like `sites`."""
        pending = {key: self._submit(site, ctx) for key, site in sites.items()}
        return {key: self._collect(p) for key, p in pending.items()}

    def close(self) -> None:
        """Stop taking work; abandoned checks end by their own socket timeouts."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, check: HealthCheck, timeout: float, ctx: ProbeContext) -> CheckResult:
        with self._lock:
            self._in_flight += 1
        try:
            return run_check(check, timeout, ctx)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _submit(self, site: Site, ctx: ProbeContext) -> _Pending:
        timeout = float(site.timeout_seconds)
        futures = [self._pool.submit(self._run, check, timeout, ctx) for check in site.checks]
        deadline = time.monotonic() + timeout + GRACE_SECONDS
        return _Pending(site, self._clock(), deadline, futures)

    def _collect(self, pending: _Pending) -> SiteProbe:
        wait_futures(pending.futures, timeout=max(0.0, pending.deadline - time.monotonic()))
        timeout = pending.site.timeout_seconds
        results = []
        for check, future in zip(pending.site.checks, pending.futures, strict=True):
            if future.done():
                results.append(future.result())
            elif future.cancel():
                results.append(CheckResult(
                    check.name, False, timeout * 1000.0,
                    f"not started within {timeout}s: all {self.max_workers} probe workers "
                    "are busy",
                ))
            else:
                results.append(CheckResult(
                    check.name, False, timeout * 1000.0,
                    f"no answer within timeoutSeconds={timeout}; abandoned",
                ))
        return SiteProbe(pending.site.name, pending.started, tuple(results))
