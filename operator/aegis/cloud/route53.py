"""Route53 record changes for failover: read a record as it is, UPSERT a new value, wait for
INSYNC through `get_change`, and put the old value back on failback.

    client = route53_client(region=None, endpoint=None, credentials=secret_data_or_None)
    records = Route53Records(client)
    before = records.read(zone_id, "db.example.com", "A", deadline)   # None: no such record
    change = records.upsert(zone_id, RecordSnapshot.of_values("db.example.com", "A", 60,
                            ["10.0.0.2"]), deadline, comment="aegis failover")
    records.wait_insync(change, deadline)                              # raises Route53Error

Deadlines are `time.monotonic()` values. Throttling and connection errors are retried with
backoff until the deadline; everything else raises `Route53Error` whose message names the
field to fix and never holds credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_route53.type_defs import ResourceRecordSetTypeDef

RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "PriorRequestNotComplete", "ServiceUnavailable",
    "RequestLimitExceeded", "InternalError",
})
FIRST_POLL_SECONDS = 0.25
MAX_POLL_SECONDS = 5.0

T = TypeVar("T")


class Route53Error(Exception):
    """A change that cannot be made; the message says why and what to fix."""


@dataclass(frozen=True)
class AliasSnapshot:
    hosted_zone_id: str
    dns_name: str
    evaluate_target_health: bool = False


@dataclass(frozen=True)
class RecordSnapshot:
    """A simple (non-routing-policy) record set: values with a TTL, or an alias."""

    name: str
    type: str
    ttl: int | None = None
    values: tuple[str, ...] = ()
    alias: AliasSnapshot | None = None

    @classmethod
    def of_values(cls, name: str, type_: str, ttl: int, values: list[str]) -> RecordSnapshot:
        return cls(name, type_, ttl, tuple(values))

    def to_json(self) -> str:
        body: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.alias is not None:
            body["aliasTarget"] = {
                "hostedZoneId": self.alias.hosted_zone_id,
                "dnsName": self.alias.dns_name,
                "evaluateTargetHealth": self.alias.evaluate_target_health,
            }
        else:
            body["ttl"] = self.ttl
            body["values"] = list(self.values)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RecordSnapshot | None:
        """The snapshot `to_json` wrote, or None for `absent_json` (no record before)."""
        body = json.loads(text)
        if body.get("absent"):
            return None
        alias = body.get("aliasTarget")
        return cls(
            name=body["name"],
            type=body["type"],
            ttl=body.get("ttl"),
            values=tuple(body.get("values") or ()),
            alias=AliasSnapshot(
                alias["hostedZoneId"], alias["dnsName"], bool(alias["evaluateTargetHealth"])
            ) if alias else None,
        )

    def record_set(self) -> ResourceRecordSetTypeDef:
        record: ResourceRecordSetTypeDef = {"Name": self.name, "Type": self.type}  # type: ignore[typeddict-item]
        if self.alias is not None:
            record["AliasTarget"] = {
                "HostedZoneId": self.alias.hosted_zone_id,
                "DNSName": self.alias.dns_name,
                "EvaluateTargetHealth": self.alias.evaluate_target_health,
            }
        else:
            record["TTL"] = self.ttl if self.ttl is not None else 60
            record["ResourceRecords"] = [{"Value": v} for v in self.values]
        return record

    def describe(self) -> str:
        if self.alias is not None:
            return f"{self.name} {self.type} alias {self.alias.dns_name}"
        return f"{self.name} {self.type} {','.join(self.values)} ttl {self.ttl}"


def absent_json(name: str, type_: str) -> str:
    """The snapshot of a record that did not exist: failback deletes what failover created."""
    return json.dumps({"absent": True, "name": name, "type": type_}, sort_keys=True)


def normalize_name(name: str) -> str:
    """Route53's spelling of a name: lower case, trailing dot, `*` as `\\052`."""
    name = name.strip().lower().replace("*", "\\052")
    return name if name.endswith(".") else name + "."


def route53_client(
    region: str | None = None,
    endpoint: str | None = None,
    credentials: Mapping[str, str] | None = None,
) -> Route53Client:
    """A client with bounded network timeouts; `credentials` holds AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (optionally AWS_SESSION_TOKEN), absent uses ambient credentials."""
    access_key = secret_key = session_token = None
    if credentials is not None:
        needed = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        missing = [k for k in needed if k not in credentials]
        if missing:
            raise Route53Error(
                f"credentialsSecretRef: the Secret lacks {', '.join(missing)}; add the keys or "
                "remove credentialsSecretRef to use ambient credentials"
            )
        access_key = credentials["AWS_ACCESS_KEY_ID"]
        secret_key = credentials["AWS_SECRET_ACCESS_KEY"]
        session_token = credentials.get("AWS_SESSION_TOKEN") or None
    config = Config(
        connect_timeout=5, read_timeout=15, retries={"mode": "standard", "max_attempts": 2}
    )
    return boto3.client(
        "route53", region_name=region or "us-east-1", endpoint_url=endpoint, config=config,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        aws_session_token=session_token,
    )


def explain(error: ClientError, zone_id: str, name: str = "") -> Route53Error:
    """A Route53Error whose message says which field is wrong and how to fix it."""
    code = error.response.get("Error", {}).get("Code", "Unknown")
    text = error.response.get("Error", {}).get("Message", "") or str(error)
    if code == "NoSuchHostedZone":
        return Route53Error(
            f"route53.hostedZoneId: hosted zone {zone_id} does not exist or is not visible to "
            "these credentials; check the id (Z...) and the account"
        )
    if code == "InvalidChangeBatch":
        return Route53Error(
            f"route53: Route53 rejected the change of {name}: {text}; check recordName, type "
            "and values/aliasTarget"
        )
    if code == "InvalidInput":
        return Route53Error(f"route53: invalid input for {name}: {text}")
    if code in ("AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
                "SignatureDoesNotMatch"):
        return Route53Error(
            f"route53: {code}: the credentials may not change zone {zone_id}; grant "
            "route53:ChangeResourceRecordSets, ListResourceRecordSets and GetChange"
        )
    return Route53Error(f"route53: {code}: {text}")


class Route53Records:
    """Record operations on one client, each bounded by a monotonic deadline."""

    def __init__(
        self,
        client: Route53Client,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.clock = clock
        self.sleep = sleep

    def _retrying(self, what: str, call: Callable[[], T], deadline: float,
                  explain_as: Callable[[ClientError], Route53Error]) -> T:
        delay = FIRST_POLL_SECONDS
        while True:
            try:
                return call()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in RETRYABLE_CODES:
                    raise explain_as(exc) from None
                last = f"{code}"
            except BotoCoreError as exc:  # connection refused, DNS, read timeout
                last = f"{type(exc).__name__}: {exc}"
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise Route53Error(f"route53: {what} did not succeed before the step's "
                                   f"timeoutSeconds; last error: {last}")
            self.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_POLL_SECONDS)

    def read(self, zone_id: str, name: str, type_: str, deadline: float) -> RecordSnapshot | None:
        """The record set named `name` of `type_`, or None when there is none."""
        wanted = normalize_name(name)
        response = self._retrying(
            f"reading {name} {type_}",
            lambda: self.client.list_resource_record_sets(
                HostedZoneId=zone_id, StartRecordName=wanted, StartRecordType=type_,  # type: ignore[arg-type]
                MaxItems="1",
            ),
            deadline,
            lambda exc: explain(exc, zone_id, name),
        )
        found = response.get("ResourceRecordSets") or []
        if not found:
            return None
        record = found[0]
        if normalize_name(record["Name"]) != wanted or record["Type"] != type_:
            return None
        if "SetIdentifier" in record:
            raise Route53Error(
                f"route53.recordName: {name} {type_} uses a routing policy (SetIdentifier "
                f"{record['SetIdentifier']!r}); Aegis flips simple records only, so point "
                "recordName at a simple record"
            )
        alias = record.get("AliasTarget")
        if alias is not None:
            return RecordSnapshot(record["Name"], type_, alias=AliasSnapshot(
                alias["HostedZoneId"], alias["DNSName"], alias["EvaluateTargetHealth"]
            ))
        values = tuple(r["Value"] for r in record.get("ResourceRecords", []))
        return RecordSnapshot(record["Name"], type_, record.get("TTL"), values)

    def _change(self, zone_id: str, action: str, record: RecordSnapshot, comment: str,
                deadline: float) -> tuple[str, str]:
        response = self._retrying(
            f"{action} of {record.name}",
            lambda: self.client.change_resource_record_sets(
                HostedZoneId=zone_id,
                ChangeBatch={
                    "Comment": comment[:256],
                    "Changes": [{"Action": action, "ResourceRecordSet": record.record_set()}],  # type: ignore[typeddict-item]
                },
            ),
            deadline,
            lambda exc: explain(exc, zone_id, record.name),
        )
        info = response["ChangeInfo"]
        return info["Id"], info["Status"]

    def upsert(self, zone_id: str, record: RecordSnapshot, deadline: float,
               comment: str = "aegis") -> tuple[str, str]:
        """UPSERT (idempotent); returns (change id, status)."""
        return self._change(zone_id, "UPSERT", record, comment, deadline)

    def delete(self, zone_id: str, record: RecordSnapshot, deadline: float,
               comment: str = "aegis") -> tuple[str, str]:
        """DELETE `record`, which must match the record as it is now."""
        return self._change(zone_id, "DELETE", record, comment, deadline)

    def wait_insync(self, change_id: str, deadline: float, status: str = "PENDING") -> float:
        """Poll get_change with backoff until INSYNC; returns the seconds waited. Raises
        Route53Error when the deadline passes while the change is still PENDING."""
        started = self.clock()
        delay = FIRST_POLL_SECONDS
        while status != "INSYNC":
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise Route53Error(
                    f"route53: change {change_id} still {status} after "
                    f"{self.clock() - started:.1f}s, at the step's timeoutSeconds; the record "
                    "is being applied but not yet on all Route53 servers: raise "
                    "timeoutSeconds (AWS usually syncs within 60 s)"
                )
            self.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_POLL_SECONDS)
            response = self._retrying(
                f"get_change {change_id}",
                lambda: self.client.get_change(Id=change_id),
                deadline,
                lambda exc: explain(exc, ""),
            )
            status = response["ChangeInfo"]["Status"]
        return self.clock() - started
