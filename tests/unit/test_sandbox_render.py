"""The demo's rendering of examples/ for the sandbox: every placeholder replaced, or reported."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from aegis.sandbox.demo import SandboxEndpoints, invalid_policies, render_documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

ENDPOINTS = SandboxEndpoints(
    hosts={
        "orders-db.shop.svc.cluster.local": ("127.0.0.1", 5001),
        "orders-db-standby.shop.svc.cluster.local": ("127.0.0.1", 5002),
        "orders-db-staging.shop.svc.cluster.local": ("127.0.0.1", 5001),
        "cache.shop.svc.cluster.local": ("127.0.0.1", 6001),
    },
    url_prefixes={
        "https://api.shop.example.com": "http://127.0.0.1:7001",
        "https://hooks.example.com": "http://127.0.0.1:7001",
    },
    s3_endpoint="http://127.0.0.1:8001",
    route53_endpoint="http://127.0.0.1:8001",
    hosted_zones={"Z0123456789EXAMPLE": "ZSANDBOX"},
    secret_values={
        "orders-db-credentials": {"username": "aegis", "password": "pw-1"},
        "cache-credentials": {"username": "aegis-backup", "password": "pw-2"},
        "backup-encryption-keys": {"2025-01": "ab" * 32},
        "backup-s3-credentials": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
        "route53-credentials": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
        "oncall-webhook-headers": {"Authorization": "Bearer t"},
    },
)


def load(name: str) -> list[object]:
    return list(yaml.safe_load_all((EXAMPLES / name).read_text()))


def test_every_example_renders_without_a_placeholder_left() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs, problems = render_documents(yaml.safe_load_all(path.read_text()), ENDPOINTS)
        assert problems == [], path.name
        text = yaml.safe_dump_all(docs)
        assert ".svc.cluster.local" not in text, path.name
        assert "PLACEHOLDER" not in text and "change-me" not in text, path.name


def test_postgres_source_points_at_the_sandbox_without_tls() -> None:
    (policy,), _ = render_documents(load("backuppolicy-postgres.yaml"), ENDPOINTS)
    source = policy["spec"]["source"]["postgres"]
    assert (source["host"], source["port"], source["sslMode"]) == ("127.0.0.1", 5001, "disable")
    assert policy["spec"]["storage"]["endpoint"] == "http://127.0.0.1:8001"
    assert policy["spec"]["copies"][0]["endpoint"] == "http://127.0.0.1:8001"
    # Everything else is the example's own.
    assert policy["spec"]["schedule"] == "0 */6 * * *"
    assert policy["spec"]["storage"]["bucket"] == "acme-dr-backups"


def test_failover_plan_targets_the_standby_and_the_sandbox_zone() -> None:
    (plan,), _ = render_documents(load("failoverplan.yaml"), ENDPOINTS)
    promote = plan["spec"]["steps"][0]["postgresPromote"]
    assert promote["target"]["port"] == 5002 and promote["fencePrimary"]["port"] == 5001
    dns = plan["spec"]["steps"][2]["route53"]
    assert dns["hostedZoneId"] == "ZSANDBOX" and dns["endpoint"] == "http://127.0.0.1:8001"
    http = plan["spec"]["primary"]["checks"][1]["http"]
    assert http["url"] == "http://127.0.0.1:7001/healthz"


def test_secrets_carry_sandbox_values_as_data() -> None:
    docs, _ = render_documents(load("secrets.yaml"), ENDPOINTS)
    by_name = {d["metadata"]["name"]: d for d in docs}
    db = by_name["orders-db-credentials"]
    assert "stringData" not in db
    assert base64.b64decode(db["data"]["password"]).decode() == "pw-1"


def test_unknown_placeholders_are_reported_not_passed_through() -> None:
    doc = {
        "kind": "BackupPolicy",
        "metadata": {"name": "x"},
        "spec": {"source": {"postgres": {"host": "billing.prod.svc.cluster.local"}}},
    }
    secret = {"kind": "Secret", "metadata": {"name": "unknown"}, "stringData": {"a": "b"}}
    _, problems = render_documents([doc, secret], ENDPOINTS)
    assert any("billing.prod.svc.cluster.local" in p for p in problems)
    assert any("Secret unknown" in p for p in problems)


def test_invalid_variants_differ_from_the_valid_policy_in_one_field() -> None:
    (policy,), _ = render_documents(load("backuppolicy-postgres.yaml"), ENDPOINTS)
    variants = invalid_policies(policy)
    assert len(variants) == 3
    for doc, _what in variants:
        changed = {k for k in policy["spec"] if doc["spec"][k] != policy["spec"][k]}
        assert len(changed) == 1 and doc["metadata"]["name"] != policy["metadata"]["name"]
    assert policy["spec"]["schedule"] == "0 */6 * * *"  # the original is untouched
