"""The manifest: wire form, versioning, and the RecoveryPoint status it proves."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from aegis.agent.manifest import (
    FORMAT_VERSION,
    EncryptionRecord,
    Manifest,
    ManifestError,
    SourceRecord,
    TableRows,
    parse_manifest,
)
from aegis.api.recoverypoint import RecoveryPointStatus

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def sample() -> Manifest:
    return Manifest(
        namespace="shop",
        policy="orders",
        recovery_point="orders-1",
        location="s3://bkt/p/shop/orders/orders-1/payload",
        manifest="p/shop/orders/orders-1/manifest.json",
        payload_format="pg_dump-custom",
        start_time=T0,
        completion_time=T0 + dt.timedelta(seconds=30),
        source_time=T0 + dt.timedelta(seconds=1),
        source=SourceRecord(
            kind="Postgres",
            database="orders",
            server_version="15.4",
            position="0/16B3748",
            tables=2,
            rows=7,
            method="pg_dump",
            dump_tool_version="15.4",
            table_rows=[
                TableRows(schema="public", name="a", rows=3),
                TableRows(schema="app", name="b", rows=4),
            ],
        ),
        size_bytes=1000,
        stored_bytes=500,
        sha256="ab" * 32,
        compression="Zstd",
        encryption=EncryptionRecord(
            algorithm="AES-256-GCM-STREAM",
            key_id="k1",
            key_wrap="AES-KW",
            wrapped_key="AAAA",
            chunk_size=1 << 20,
            nonce_prefix="01020304050607",
        ),
        locked_until=T0 + dt.timedelta(days=7),
    )


def test_round_trip_through_json() -> None:
    manifest = sample()
    wire = json.loads(manifest.to_json())
    assert wire["formatVersion"] == FORMAT_VERSION
    assert wire["source"]["tableRows"][1] == {"schema": "app", "name": "b", "rows": 4}
    assert wire["encryption"]["keyWrap"] == "AES-KW"
    assert parse_manifest(manifest.to_json(), "x") == manifest


def test_status_is_a_valid_recovery_point_status() -> None:
    status = sample().recovery_point_status()
    parsed = RecoveryPointStatus.model_validate(status)
    assert parsed.sha256 == "ab" * 32
    assert parsed.source is not None and parsed.source.rows == 7
    assert parsed.encryption is not None and parsed.encryption.key_id == "k1"
    assert parsed.locked_until == T0 + dt.timedelta(days=7)
    assert status["sourceTime"] == "2025-01-02T03:04:06Z"
    # No key material leaves through status.
    assert "wrappedKey" not in json.dumps(status)


def test_table_rows() -> None:
    assert sample().table_rows() == {"public.a": 3, "app.b": 4}


def test_newer_format_is_refused_with_the_fix() -> None:
    wire = json.loads(sample().to_json())
    wire["formatVersion"] = FORMAT_VERSION + 1
    with pytest.raises(ManifestError, match="use a newer Aegis image"):
        parse_manifest(json.dumps(wire), "s3://b/m")


def test_unknown_fields_are_ignored_missing_ones_named() -> None:
    wire = json.loads(sample().to_json())
    wire["futureField"] = 1
    assert parse_manifest(json.dumps(wire), "m").sha256 == "ab" * 32
    del wire["sha256"]
    with pytest.raises(ManifestError, match="sha256"):
        parse_manifest(json.dumps(wire), "m")
    with pytest.raises(ManifestError, match="not JSON"):
        parse_manifest(b"\xff", "m")
