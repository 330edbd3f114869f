"""Deterministic names and labels of everything Aegis creates.

Names are functions of the inputs only, so a retried create after a crash or a restart
asks for the same name and gets 409 AlreadyExists instead of a duplicate.

Rules (see docs/scheduling.md):

- RecoveryPoint of a scheduled run: `<policy>-<yyyymmddhhmmss>`, the tick's scheduled time
  (without jitter) in **UTC**, so the name does not depend on the policy's time zone and
  the two runs of an hourly schedule in a repeated fall-back hour get distinct names.
  Object names are DNS subdomains of at most 253 characters; a policy name too long to
  leave room for the timestamp is cut and a hash of the full name is added.
- Jobs: `<component>-<owner name>` (`backup-<recoverypoint>`, `restore-<restore>`,
  `drill-<drill>-<yyyymmddhhmmss>`). A Job's name becomes a pod label value, so it is
  kept to a DNS label of at most 63 characters; longer names, and names whose owner has
  dots (which become dashes), end in a 10-hex-digit hash of the full name instead.
- Label values are at most 63 characters; a longer object name is stored as its cut-and-
  hashed form by `label_value`. Select with `label_value(name)`, never with the raw name.

Nothing here imports kopf or kubernetes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Final, Literal

# Re-exported: the names are defined in aegis.labels, read here with the names they label.
from aegis.labels import DRILL_LABEL as DRILL_LABEL
from aegis.labels import POLICY_LABEL as POLICY_LABEL
from aegis.labels import RECOVERY_POINT_LABEL as RECOVERY_POINT_LABEL
from aegis.labels import RESTORE_LABEL as RESTORE_LABEL

MAX_OBJECT_NAME: Final = 253
MAX_LABEL_VALUE: Final = 63
MAX_JOB_NAME: Final = 63
HASH_CHARS: Final = 10
TIMESTAMP_FORMAT: Final = "%Y%m%d%H%M%S"

MANAGED_BY: Final = "app.kubernetes.io/managed-by"
COMPONENT: Final = "app.kubernetes.io/component"
MANAGER: Final = "aegis"

Component = Literal["backup", "restore", "drill", "verify"]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def is_dns_subdomain(value: str) -> bool:
    """True for a valid Kubernetes object name (RFC 1123 subdomain, ≤ 253 characters)."""
    return len(value) <= MAX_OBJECT_NAME and bool(_DNS_SUBDOMAIN.match(value))


def is_dns_label(value: str) -> bool:
    """True for a valid RFC 1123 label (≤ 63 characters, no dots)."""
    return len(value) <= MAX_LABEL_VALUE and bool(_DNS_LABEL.match(value))


def is_label_value(value: str) -> bool:
    """True for a valid label value (≤ 63 characters, alphanumeric ends, `-_.` inside)."""
    return len(value) <= MAX_LABEL_VALUE and bool(_LABEL_VALUE.match(value))


def short_hash(text: str, chars: int = HASH_CHARS) -> str:
    """The first `chars` hex digits of the SHA-256 of `text`: stable across processes."""
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def _trim_end(text: str) -> str:
    # A cut may leave a trailing '-' or '.', which no name or label may end with.
    return text.rstrip("-._")


def fit(name: str, limit: int, *, hashed_from: str | None = None) -> str:
    """`name` itself when it is at most `limit` characters; otherwise its head, a dash and
    a hash of `hashed_from` (default: `name`), `limit` characters at most. Because the hash
    covers the whole input, two long names that share a head still differ."""
    if len(name) <= limit:
        return name
    digest = short_hash(hashed_from if hashed_from is not None else name)
    head = _trim_end(name[: limit - HASH_CHARS - 1])
    return f"{head}-{digest}" if head else digest


def label_value(name: str) -> str:
    """The label value that stands for object `name` (its cut-and-hashed form when longer
    than 63 characters)."""
    return fit(name, MAX_LABEL_VALUE)


def format_tick(scheduled: dt.datetime) -> str:
    """`yyyymmddhhmmss` of an aware time, in UTC."""
    if scheduled.tzinfo is None:
        raise ValueError("scheduled time must be timezone-aware")
    return scheduled.astimezone(dt.UTC).strftime(TIMESTAMP_FORMAT)


def _with_suffix(prefix: str, suffix: str, limit: int) -> str:
    """`<prefix>-<suffix>` within `limit`, cutting and hashing `prefix` (never the suffix,
    which carries the identity a reader looks for, e.g. the timestamp)."""
    whole = f"{prefix}-{suffix}"
    if len(whole) <= limit:
        return whole
    room = limit - len(suffix) - 1
    return f"{fit(prefix, room, hashed_from=whole)}-{suffix}"


def recovery_point_name(policy: str, scheduled: dt.datetime) -> str:
    """Name of the RecoveryPoint of the tick `scheduled` of `policy`:
    `<policy>-<yyyymmddhhmmss>` in UTC, ≤ 253 characters."""
    return _with_suffix(policy, format_tick(scheduled), MAX_OBJECT_NAME)


def on_demand_recovery_point_name(policy: str, requested: dt.datetime) -> str:
    """Name for an on-demand point made by `kubectl aegis backup`:
    `<policy>-manual-<yyyymmddhhmmss>` in UTC. Two requests in the same second collide on
    purpose: the second create gets 409 and the CLI follows the existing point."""
    return _with_suffix(policy, f"manual-{format_tick(requested)}", MAX_OBJECT_NAME)


def job_name(component: Component, owner: str, *parts: str) -> str:
    """Deterministic Job name `<component>-<owner>[-<part>...]`, a DNS label ≤ 63
    characters. Long names are cut and hashed; a name with dots gets dashes instead and
    always a hash, so that `a.b` and `a-b` (both valid owner names) stay distinct."""
    whole = "-".join((component, owner, *parts))
    dashed = whole.replace(".", "-")
    if dashed == whole:
        return fit(whole, MAX_JOB_NAME)
    head = _trim_end(dashed[: MAX_JOB_NAME - HASH_CHARS - 1])
    return f"{head}-{short_hash(whole)}"


def backup_job_name(recovery_point: str) -> str:
    """The Job that runs `aegis agent backup` for one RecoveryPoint (scheduled or
    on-demand alike: the point's name is already unique)."""
    return job_name("backup", recovery_point)


def restore_job_name(restore: str) -> str:
    """The Job of a Restore."""
    return job_name("restore", restore)


def drill_job_name(drill: str, run: dt.datetime) -> str:
    """The Job of one run of a DRDrill, identified by the run's start time in UTC."""
    return job_name("drill", drill, format_tick(run))


def verify_job_name(recovery_point: str, request: str) -> str:
    """The Job that authenticates one point for one request (an on-demand token or a
    schedule tick): a retried request finds its Job, a new one gets a new Job."""
    return job_name("verify", recovery_point, short_hash(request, 8))


def verify_job_labels(policy: str, recovery_point: str) -> dict[str, str]:
    """Labels of a verify Job and its pod template."""
    return {
        **common_labels("verify"),
        POLICY_LABEL: label_value(policy),
        RECOVERY_POINT_LABEL: label_value(recovery_point),
    }


def common_labels(component: Component) -> dict[str, str]:
    """Labels on every object Aegis creates for `component`."""
    return {MANAGED_BY: MANAGER, COMPONENT: component}


def recovery_point_labels(policy: str) -> dict[str, str]:
    """Labels of a RecoveryPoint made by the operator (select a policy's points with
    `dr.aegis.dev/policy=label_value(policy)`)."""
    return {**common_labels("backup"), POLICY_LABEL: label_value(policy)}


def backup_job_labels(policy: str, recovery_point: str) -> dict[str, str]:
    """Labels of a backup Job and its pod template."""
    return {
        **common_labels("backup"),
        POLICY_LABEL: label_value(policy),
        RECOVERY_POINT_LABEL: label_value(recovery_point),
    }


def restore_job_labels(restore: str, recovery_point: str | None = None) -> dict[str, str]:
    """Labels of a restore Job and its pod template."""
    labels = {**common_labels("restore"), RESTORE_LABEL: label_value(restore)}
    if recovery_point:
        labels[RECOVERY_POINT_LABEL] = label_value(recovery_point)
    return labels


def drill_job_labels(drill: str, recovery_point: str | None = None) -> dict[str, str]:
    """Labels of a drill Job and its pod template."""
    labels = {**common_labels("drill"), DRILL_LABEL: label_value(drill)}
    if recovery_point:
        labels[RECOVERY_POINT_LABEL] = label_value(recovery_point)
    return labels
