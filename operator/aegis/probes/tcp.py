"""TCP check: healthy when a connection opens within the timeout. The host is resolved and
checked against the endpoint rule first, and the connection goes to the checked address."""

from __future__ import annotations

from aegis.api.failoverplan import TcpCheck
from aegis.probes.base import CheckResult, timed
from aegis.reach import EndpointRefused, EndpointRule, guarded_create_connection


def check_tcp(
    name: str, spec: TcpCheck, timeout: float, endpoints: EndpointRule | None = None
) -> CheckResult:
    """Open and close a TCP connection to `spec.host:spec.port`; never raises. A host that
    `endpoints` (default: the strict rule) refuses fails the check without a connection."""
    connect = guarded_create_connection(endpoints or EndpointRule())

    def run() -> tuple[bool, str]:
        try:
            with connect((spec.host, spec.port), timeout):
                return True, f"connected to {spec.host}:{spec.port}"
        except EndpointRefused as refused:
            return False, str(refused)
        except OSError as exc:
            return False, f"connect {spec.host}:{spec.port}: {exc.strerror or exc}"

    return timed(name, run, [])
