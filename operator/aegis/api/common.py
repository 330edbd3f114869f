"""Shapes shared by every kind: references, targets, S3 locations, Job options, conditions.

Field names are camelCase on the wire (the Kubernetes convention) and snake_case in Python.
Every field carries a description: it becomes the CRD's `description`, which is what
`kubectl explain` shows.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from aegis.agent.wire import ObjectLock, Port, ServerSideEncryption, SSLMode, WireModel

# Every integer in a spec has a maximum the code can handle, so the schema refuses what the
# operator could not act on (a deadline of 2^62 seconds overflows a timedelta; past 2^63 the
# API server refuses the number itself, with a less helpful message).
MAX_SECONDS = 10 * 366 * 24 * 3600
"""Ten years: the longest duration any spec field accepts."""
MAX_COUNT = 2**31 - 1
"""int32, the range Kubernetes gives counts (replicas, backoffLimit)."""
NonNegativeInt = Annotated[int, Field(ge=0, le=MAX_COUNT)]
PositiveSeconds = Annotated[int, Field(ge=1, le=MAX_SECONDS)]
NonNegativeSeconds = Annotated[int, Field(ge=0, le=MAX_SECONDS)]
# RFC 1123 subdomain, the rule the API server applies to object names.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]


class ApiModel(WireModel):
    """Base of every API shape: camelCase aliases, unknown fields refused (the agent's wire
    base, so a shape both sides use is one class)."""

    def to_api(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.to_wire()


class StatusModel(ApiModel):
    """Status shapes tolerate fields written by newer operator versions."""

    model_config = ConfigDict(extra="ignore")


def exactly_one(model: BaseModel, fields: tuple[str, ...], field: str | None = None) -> None:
    """Raise when not exactly one of `fields` is set (the model-side twin of a CEL rule).

    `field` names the field the message is about when the check runs on a parent model."""
    present = [f for f in fields if getattr(model, f) is not None]
    if len(present) == 1:
        return
    names = " or ".join(to_camel(f) for f in fields)
    problem = f"set exactly one of {names}"
    if present:
        problem += f", not {' and '.join(to_camel(f) for f in present)}"
    raise ValueError(f"{field}: {problem}" if field else problem)


def cel(*rules: dict[str, str]) -> JsonDict:
    """`json_schema_extra` carrying CEL rules, which the generated CRD enforces at the API
    server (each model re-checks them, for clusters or emulators that skip CEL).

    No structural `oneOf` twin is generated for exactly-one rules: a failing `oneOf` makes
    kube-apiserver print `<nil>: Invalid value: "": ... Found 2 valid alternatives` before
    the CEL message, and every server the chart supports (kubeVersion >=1.25, CEL on by
    default since 1.25, GA in 1.29) enforces the CEL rule, whose message says what to do."""
    extra: dict[str, Any] = {"x-kubernetes-validations": list(rules)}
    return cast(JsonDict, extra)


def one_of_rule(fields: tuple[str, ...], what: str) -> dict[str, str]:
    """The CEL rule that exactly one of `fields` (camelCase) is present."""
    terms = " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields)
    return {"rule": f"{terms} == 1", "message": f"{what}: set exactly one of {', '.join(fields)}"}


class LocalObjectRef(ApiModel):
    """A reference to an object of a known kind in the same namespace."""

    name: ObjectName
    """Name of the referenced object."""


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: SecretKey
    """Key inside the Secret's data."""


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_ENV = {
    "rule": "!self.name.startsWith('AEGIS_') && !self.name.startsWith('AWS_') && "
    "!(self.name in ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'])",
    "message": "name: AEGIS_*, AWS_*, PATH, HOME, LANG, LC_ALL, TZ and TMPDIR are set by the "
    "agent; pick another variable name",
}
Argv = Annotated[list[Annotated[str, Field(max_length=4096)]], Field(min_length=1, max_length=256)]
"""A command as an argument vector: no shell unless argv[0] is one (`[sh, -c, "..."]`)."""


def check_env_name(value: str) -> str:
    if value.startswith(("AEGIS_", "AWS_")) or value in (
        "PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR",
    ):
        raise ValueError(RESERVED_ENV["message"].removeprefix("name: "))
    return value


class SecretEnvVar(ApiModel):
    """An environment variable of a user command, its value read from a Secret key (never
    written in the spec, the Job's arguments or its logs)."""

    model_config = ConfigDict(json_schema_extra=cel(RESERVED_ENV))

    name: Annotated[
        str, Field(min_length=1, max_length=128, pattern=ENV_NAME), AfterValidator(check_env_name)
    ]
    """Variable name as the command sees it, e.g. MYSQL_PWD."""
    secret_key_ref: SecretKeyRef
    """The Secret key holding the value."""


class SecretRef(ApiModel):
    """A whole Secret in the resource's namespace."""

    name: ObjectName
    """Name of the Secret."""


class PostgresTarget(ApiModel):
    """How to reach one PostgreSQL database. Credentials come from Secrets, never inline."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    """Host name or IP of the server, e.g. `orders-db.prod.svc`."""
    port: Port = 5432
    """TCP port of the server."""
    database: Annotated[str, Field(min_length=1, max_length=63)]
    """Database name."""
    user_secret_ref: SecretKeyRef
    """Secret key holding the user name."""
    password_secret_ref: SecretKeyRef
    """Secret key holding the password."""
    ssl_mode: SSLMode = "prefer"
    """libpq `sslmode`."""


class RedisTarget(ApiModel):
    """How to reach one Redis server."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    """Host name or IP of the server."""
    port: Port = 6379
    """TCP port of the server."""
    password_secret_ref: SecretKeyRef | None = None
    """Secret key holding the password (AUTH); absent for an open server."""
    username_secret_ref: SecretKeyRef | None = None
    """Secret key holding the ACL user name; absent for the default user."""
    tls: bool = False
    """Connect with TLS."""
    db: Annotated[int, Field(ge=0, le=15)] | None = None
    """Logical database index for checks; backups always cover the whole server."""


# S3's bucket naming rules (general purpose buckets): 3-63 characters; lowercase letters,
# digits, dots and hyphens; a letter or digit at both ends; no `..`, `.-` or `-.` (the
# pattern: labels of letters and digits joined by one dot or by hyphens); not an IPv4
# address; none of the reserved prefixes and suffixes (the CEL rules and `check_bucket`).
BUCKET_PATTERN = r"^[a-z0-9]+(-+[a-z0-9]+|\.[a-z0-9]+)*$"
BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
IPV4_PATTERN = r"^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$"
# Key prefix: `/`-separated segments, none empty, `.` or `..` (S3 keys are literal: a `..`
# would not mean a parent, it would write keys under a directory named `..`).
PREFIX_SEGMENT = r"([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
PREFIX_PATTERN = rf"^$|^{PREFIX_SEGMENT}(/{PREFIX_SEGMENT})*$"


def check_bucket(value: str) -> str:
    """The rules the pattern cannot say (RE2 and Rust regexes have no lookahead)."""
    if re.match(IPV4_PATTERN, value):
        raise ValueError(f"bucket {value!r} is formatted as an IP address, which S3 refuses")
    for reserved in BUCKET_RESERVED_PREFIXES:
        if value.startswith(reserved):
            raise ValueError(f"bucket {value!r} starts with {reserved!r}, reserved by S3")
    for reserved in BUCKET_RESERVED_SUFFIXES:
        if value.endswith(reserved):
            raise ValueError(f"bucket {value!r} ends with {reserved!r}, reserved by S3")
    return value


BUCKET_RULES = (
    {
        "rule": f"!self.bucket.matches('{IPV4_PATTERN}')",
        "message": "bucket: S3 refuses bucket names formatted as an IP address",
    },
    {
        "rule": " && ".join(f"!self.bucket.startsWith('{p}')" for p in BUCKET_RESERVED_PREFIXES),
        "message": "bucket: names starting with "
        + ", ".join(BUCKET_RESERVED_PREFIXES)
        + " are reserved by S3",
    },
    {
        "rule": " && ".join(f"!self.bucket.endsWith('{p}')" for p in BUCKET_RESERVED_SUFFIXES),
        "message": "bucket: names ending with "
        + ", ".join(BUCKET_RESERVED_SUFFIXES)
        + " are reserved by S3",
    },
)


class S3Location(ApiModel):
    """A bucket and prefix in S3 or an S3-compatible store."""

    model_config = ConfigDict(json_schema_extra=cel(*BUCKET_RULES))

    bucket: Annotated[
        str,
        Field(min_length=3, max_length=63, pattern=BUCKET_PATTERN),
        AfterValidator(check_bucket),
    ]
    """Bucket name, by S3's naming rules: 3-63 lowercase letters, digits, dots and hyphens,
    a letter or digit at both ends, no `..`, `.-` or `-.`, not an IP address."""
    prefix: Annotated[str, Field(max_length=512, pattern=PREFIX_PATTERN)] = ""
    """Key prefix inside the bucket, without leading or trailing slash, empty, `.` or `..`
    segments."""
    region: str | None = None
    """AWS region of the bucket; absent uses the client default."""
    endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Endpoint URL of an S3-compatible store (MinIO, Ceph, ...); absent means AWS.
    Link-local and cloud metadata addresses are refused, loopback unless the operator
    allows it."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; absent uses ambient
    credentials (IRSA, instance profile)."""
    storage_class: (
        Literal[
            "STANDARD",
            "STANDARD_IA",
            "ONEZONE_IA",
            "INTELLIGENT_TIERING",
            "GLACIER_IR",
            "GLACIER",
            "DEEP_ARCHIVE",
            "REDUCED_REDUNDANCY",
        ]
        | None
    ) = None
    """S3 storage class of written objects; absent uses the bucket default."""
    server_side_encryption: ServerSideEncryption | None = None
    """Server-side encryption of written objects."""
    object_lock: ObjectLock | None = None
    """Object Lock retention of written objects; locked objects are never deleted early."""


class Toleration(ApiModel):
    """A pod toleration, as in the core API."""

    key: str | None = None
    """Taint key; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: str | None = None
    """Taint value for Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""
    toleration_seconds: NonNegativeSeconds | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = Annotated[str, Field(pattern=QUANTITY)]


class ResourceRequirements(ApiModel):
    """Compute resources of the Job's container."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. `{cpu: 500m, memory: 256Mi}`."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources."""


class JobOptions(ApiModel):
    """How the Jobs that move data are run. Unset values come from the operator's defaults."""

    image: str | None = None
    """Agent image; absent uses the operator's AEGIS_AGENT_IMAGE. Another image is refused
    (ImageNotAllowed) unless the operator's AEGIS_ALLOWED_JOB_IMAGES lists it."""
    resources: ResourceRequirements | None = None
    """Requests and limits of the agent container."""
    node_selector: dict[str, str] | None = None
    """Node labels the Job's pod must match."""
    tolerations: list[Toleration] | None = None
    """Tolerations of the Job's pod."""
    service_account_name: ObjectName | None = None
    """ServiceAccount of the Job's pod (e.g. one annotated for IRSA), in the resource's
    namespace; refused (ServiceAccountNotAllowed) unless the operator's
    AEGIS_ALLOWED_SERVICE_ACCOUNTS lists it."""
    active_deadline_seconds: PositiveSeconds = 3600
    """Seconds after which a running Job is stopped and fails."""
    backoff_limit: Annotated[int, Field(ge=0, le=20)] = 2
    """Retries of the Job's pod before the Job fails."""
    ttl_seconds_after_finished: NonNegativeSeconds = 86400
    """Seconds a finished Job is kept for its logs before it is deleted."""


class Display(StatusModel):
    """Numbers of this status as people write them (`71.2 KiB`, `1m46s`, `264ms`), for
    printer columns and `kubectl get`; written with the numeric fields, which stay
    authoritative (aegis.display formats them all)."""

    size: str | None = None
    """Stored size (RecoveryPoint: the compressed, encrypted payload)."""
    logical_size: str | None = None
    """Logical size (RecoveryPoint: the dump before compression and encryption)."""
    restored: str | None = None
    """Logical bytes restored (Restore)."""
    duration: str | None = None
    """Measured duration (RecoveryPoint: the backup; Restore: the restore)."""
    rpo: str | None = None
    """RPO (BackupPolicy: current; drill run: measured)."""
    rto: str | None = None
    """Measured RTO (drill run, and the policy's last drill)."""


ConditionStatus = Literal["True", "False", "Unknown"]
REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(StatusModel):
    """One observation of the resource's state, as in the Kubernetes API conventions."""

    type: str
    """Condition type, e.g. Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(pattern=REASON)]
    """CamelCase machine-readable reason."""
    message: str = ""
    """Human-readable explanation, with the fix when the status is bad."""
    last_transition_time: dt.datetime
    """When the status last changed."""
    observed_generation: int | None = None
    """The spec generation this condition was computed from."""


def camel_reason(*words: str) -> str:
    """`("invalid", "time_zone")` → `InvalidTimeZone`."""
    parts: list[str] = []
    for word in words:
        parts.extend(p for p in re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", word) if p)
    return "".join(p[:1].upper() + p[1:] for p in parts)


def _add_one_of_rule(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    fields: tuple[str, ...] = getattr(cls, "ONE_OF", ())
    if fields:
        camel = tuple(to_camel(f) for f in fields)
        schema.setdefault("x-kubernetes-validations", []).append(one_of_rule(camel, cls.__name__))


class HasOneOf(ApiModel):
    """A shape of which exactly one member field must be set: checked by the model and,
    through a generated CEL rule, by the API server."""

    ONE_OF: ClassVar[tuple[str, ...]] = ()

    model_config = ConfigDict(json_schema_extra=_add_one_of_rule)

    @model_validator(mode="after")
    def _check_one_of(self) -> HasOneOf:
        if self.ONE_OF:
            exactly_one(self, self.ONE_OF)
        return self
