"""route53 step and failback against a moto Route53 zone over HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

from failover_helpers import DictSecrets

from aegis.api.failoverplan import Route53Step, Transition
from aegis.reconcilers.failover import PREVIOUS_RECORD, RestoreRoute53
from aegis.sandbox.servers import MotoServer
from aegis.steps.base import StepContext, StepPorts
from aegis.steps.route53 import run_route53, run_route53_restore


def make_zone(client: Any) -> str:
    zone = client.create_hosted_zone(Name="example.com.", CallerReference=str(time.time()))
    return str(zone["HostedZone"]["Id"].split("/")[-1])


def put(client: Any, zone: str, name: str, values: list[str], ttl: int = 300) -> None:
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{
        "Action": "UPSERT", "ResourceRecordSet": {
            "Name": name, "Type": "A", "TTL": ttl,
            "ResourceRecords": [{"Value": v} for v in values]}}]})


def get(client: Any, zone: str, name: str) -> dict[str, Any] | None:
    found = client.list_resource_record_sets(HostedZoneId=zone, StartRecordName=name,
                                             StartRecordType="A", MaxItems="1")
    records = [r for r in found["ResourceRecordSets"] if r["Name"] == name and r["Type"] == "A"]
    return records[0] if records else None


def step(moto: MotoServer, zone: str, name: str, **kw: Any) -> Route53Step:
    body = {"hostedZoneId": zone, "recordName": name, "type": "A", "ttl": 30,
            "endpoint": moto.endpoint, "credentialsSecretRef": {"name": "aws"}, **kw}
    if "aliasTarget" not in body:
        body.setdefault("values", ["10.0.0.2"])
    return Route53Step.model_validate(body)


def ports(moto: MotoServer) -> StepPorts:
    env = moto.aws_env()
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    return StepPorts(secrets=DictSecrets({"aws": {k: env[k] for k in keys}}))


def ctx(prior: dict[str, str] | None = None) -> tuple[StepContext, list[dict[str, str]]]:
    saved: list[dict[str, str]] = []
    return StepContext(
        plan="orders", namespace="ns", step="dns",
        transition=Transition(kind="Failover", id="failover-1"), from_site="eu", to_site="us",
        deadline=time.monotonic() + 20, prior_outputs=prior or {},
        save_outputs=lambda o: saved.append(dict(o)),
    ), saved


def test_upsert_captures_previous_values_and_failback_restores_them(
    moto: MotoServer, route53_client: Any
) -> None:
    zone = make_zone(route53_client)
    put(route53_client, zone, "db.example.com.", ["10.0.0.1"], ttl=300)
    spec = step(moto, zone, "db.example.com")
    context, saved = ctx()
    started = time.monotonic()
    result = run_route53(spec, context, ports(moto))
    elapsed = time.monotonic() - started
    assert result.ok, result.message
    assert "INSYNC" in result.message and elapsed < 5
    now = get(route53_client, zone, "db.example.com.")
    assert now is not None and now["ResourceRecords"] == [{"Value": "10.0.0.2"}]
    assert now["TTL"] == 30
    previous = saved[0][PREVIOUS_RECORD]
    assert json.loads(previous) == {"name": "db.example.com.", "type": "A", "ttl": 300,
                                    "values": ["10.0.0.1"]}
    assert result.outputs[PREVIOUS_RECORD] == previous

    # a resumed step keeps the first snapshot instead of reading its own change back
    again_ctx, again_saved = ctx(prior={PREVIOUS_RECORD: previous})
    again = run_route53(spec, again_ctx, ports(moto))
    assert again.ok and again_saved == [] and PREVIOUS_RECORD not in again.outputs

    back_ctx, _ = ctx()
    restored = run_route53_restore(RestoreRoute53(spec, previous), back_ctx, ports(moto))
    assert restored.ok, restored.message
    assert "restored db.example.com. A 10.0.0.1 ttl 300" in restored.message
    after = get(route53_client, zone, "db.example.com.")
    assert after is not None and after["ResourceRecords"] == [{"Value": "10.0.0.1"}]
    assert after["TTL"] == 300


def test_a_record_created_by_failover_is_deleted_by_failback(
    moto: MotoServer, route53_client: Any
) -> None:
    zone = make_zone(route53_client)
    spec = step(moto, zone, "new.example.com")
    context, saved = ctx()
    assert run_route53(spec, context, ports(moto)).ok
    assert json.loads(saved[0][PREVIOUS_RECORD])["absent"] is True
    assert get(route53_client, zone, "new.example.com.") is not None
    back_ctx, _ = ctx()
    restored = run_route53_restore(RestoreRoute53(spec, saved[0][PREVIOUS_RECORD]), back_ctx,
                                   ports(moto))
    assert restored.ok and "deleted" in restored.message
    assert get(route53_client, zone, "new.example.com.") is None


def test_alias_target_and_back_to_values(moto: MotoServer, route53_client: Any) -> None:
    zone = make_zone(route53_client)
    put(route53_client, zone, "db.example.com.", ["10.0.0.1"])
    put(route53_client, zone, "us.example.com.", ["10.9.9.9"])
    spec = step(moto, zone, "db.example.com", aliasTarget={
        "hostedZoneId": zone, "dnsName": "us.example.com."})
    context, saved = ctx()
    result = run_route53(spec, context, ports(moto))
    assert result.ok, result.message
    now = get(route53_client, zone, "db.example.com.")
    assert now is not None and now["AliasTarget"]["DNSName"] == "us.example.com."
    back_ctx, _ = ctx()
    assert run_route53_restore(RestoreRoute53(spec, saved[0][PREVIOUS_RECORD]), back_ctx,
                               ports(moto)).ok
    after = get(route53_client, zone, "db.example.com.")
    assert after is not None and after.get("ResourceRecords") == [{"Value": "10.0.0.1"}]


def test_unknown_zone_fails_the_step_with_the_field_to_fix(moto: MotoServer) -> None:
    context, _ = ctx()
    result = run_route53(step(moto, "ZNOSUCHZONE1", "db.example.com"), context, ports(moto))
    assert not result.ok
    assert "route53.hostedZoneId: hosted zone ZNOSUCHZONE1 does not exist" in result.message
    assert moto.aws_env()["AWS_SECRET_ACCESS_KEY"] not in result.message
