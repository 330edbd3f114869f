"""TCP check: healthy when a connection opens within the timeout."""

from __future__ import annotations

import socket

from aegis.api.failoverplan import TcpCheck
from aegis.probes.base import CheckResult, timed


def check_tcp(name: str, spec: TcpCheck, timeout: float) -> CheckResult:
    """Open and close a TCP connection to `spec.host:spec.port`; never raises."""

    def run() -> tuple[bool, str]:
        try:
            with socket.create_connection((spec.host, spec.port), timeout=timeout):
                return True, f"connected to {spec.host}:{spec.port}"
        except OSError as exc:
            return False, f"connect {spec.host}:{spec.port}: {exc.strerror or exc}"

    return timed(name, run, [])
