"""What every check shares: its result, the ports it reads credentials through, and the
rules that keep secret values out of messages."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from aegis.api.common import SecretKeyRef, SecretRef

# Messages land in status and events; a server that echoes a long body must not bloat them.
MAX_MESSAGE = 300


@dataclass(frozen=True)
class Replication:
    """What a database check saw of replication, in one unit for PostgreSQL and Redis:
    positions are bytes (a PostgreSQL LSN as a number, a Redis replication offset), so the
    distance between a source's position and a replica's is the data it lacks."""

    kind: Literal["postgres", "redis"]
    role: Literal["primary", "replica"]
    position: int | None
    """A primary's current write position; a replica's last received (flushed) position,
    kept by the server after its link broke."""
    streaming: bool | None = None
    """Replica only: the link to its source is up (WAL receiver streaming, link status up)."""
    last_message_age_seconds: float | None = None
    """Replica only: seconds since the last message from its source."""
    read_only: bool = False
    """Primary only: it refuses writes (fenced, default_transaction_read_only = on)."""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: never an exception, always a measured latency."""

    name: str
    ok: bool
    latency_ms: float
    message: str
    replication: Replication | None = None
    """Set by postgres and redis checks that reached their server."""


class SecretReader(Protocol):
    """Reads Secrets of the plan's namespace. The operator implements it with the Kubernetes
    API; raising (missing Secret or key) is fine, the caller turns it into a failed check."""

    def value(self, ref: SecretKeyRef) -> str:
        """The decoded value of one key of a Secret."""
        ...

    def data(self, ref: SecretRef) -> dict[str, str]:
        """All decoded keys and values of a Secret."""
        ...


def scrub(message: str, secrets: Iterable[str]) -> str:
    """`message` with every secret value replaced, cut to a length fit for status."""
    for value in secrets:
        if value:
            message = message.replace(value, "***")
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return message


def timed(
    name: str,
    check: Callable[[], tuple[bool, str]],
    secrets: list[str],
    seen: list[Replication] | None = None,
) -> CheckResult:
    """Run `check`, measuring it; any exception becomes a failed result whose message is
    scrubbed of `secrets` (the list is read after the call, so the check may fill it). A
    replication record the check appended to `seen` is carried by the result."""
    started = time.perf_counter()
    try:
        ok, message = check()
    except Exception as exc:  # a check reports, it never raises
        ok, message = False, f"{type(exc).__name__}: {exc}"
    latency_ms = (time.perf_counter() - started) * 1000.0
    replication = seen[-1] if seen else None
    return CheckResult(name, ok, round(latency_ms, 3), scrub(message, secrets), replication)
