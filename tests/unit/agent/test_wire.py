"""The wire models the operator's API and the agent share (aegis/agent/wire.py): one class per
shape, and the wire forms (manifests in the bucket, RecoveryPoint status, agent config) are
those the separate API and agent models produced before they were merged."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from aegis.agent.config import StoreConfig
from aegis.agent.manifest import SourceRecord, parse_manifest
from aegis.agent.wire import ObjectLock, ServerSideEncryption, SourceInfo
from aegis.api.common import LocalObjectRef, S3Location
from aegis.api.recoverypoint import RecoveryPointStatus
from aegis.reconcilers.backup import store_config

# A manifest as an older agent wrote it: a single key wrap (no `wraps`), no `tagBytes`, and a
# source detail this version does not know.
OLD_MANIFEST: dict[str, Any] = {
    "formatVersion": 1,
    "namespace": "shop",
    "policy": "orders",
    "recoveryPoint": "orders-1",
    "location": "s3://bkt/p/shop/orders/orders-1/payload",
    "manifest": "p/shop/orders/orders-1/manifest.json",
    "payloadFormat": "redis-rdb",
    "startTime": "2025-01-02T03:04:05Z",
    "completionTime": "2025-01-02T03:04:35Z",
    "sourceTime": "2025-01-02T03:04:06Z",
    "source": {
        "kind": "Redis",
        "serverVersion": "7.2.4",
        "position": "12345",
        "keys": 42,
        "method": "Sync",
        "futureDetail": "x",
    },
    "sizeBytes": 1000,
    "storedBytes": 500,
    "sha256": "ab" * 32,
    "compression": "Zstd",
    "compressionLevel": 1,
    "encryption": {
        "algorithm": "AES-256-GCM-STREAM",
        "keyId": "k1",
        "keyWrap": "AES-KW",
        "wrappedKey": "AAAA",
        "chunkSize": 1048576,
        "noncePrefix": "01020304050607",
    },
    "storage": {
        "storageClass": "STANDARD_IA",
        "serverSideEncryption": "aws:kms",
        "kmsKeyId": "arn:k",
        "objectLockMode": "GOVERNANCE",
    },
    "lockedUntil": "2025-01-09T03:04:05Z",
    "copies": [
        {
            "location": "s3://b2/x/payload",
            "state": "Completed",
            "time": "2025-01-02T03:05:00Z",
            "method": "ServerSideCopy",
        }
    ],
    "agentVersion": "0.9.0",
}

# What the agent wrote back for OLD_MANIFEST before the models were shared (captured from
# that version): the unknown field dropped, tagBytes defaulted, keys sorted.
OLD_MANIFEST_REWRITTEN = (
    '{"agentVersion":"0.9.0","completionTime":"2025-01-02T03:04:35Z","compression":"Zstd",'
    '"compressionLevel":1,"copies":[{"location":"s3://b2/x/payload","method":"ServerSideCopy",'
    '"state":"Completed","time":"2025-01-02T03:05:00Z"}],"encryption":{"algorithm":'
    '"AES-256-GCM-STREAM","chunkSize":1048576,"keyId":"k1","keyWrap":"AES-KW","noncePrefix":'
    '"01020304050607","tagBytes":16,"wrappedKey":"AAAA"},"formatVersion":1,"location":'
    '"s3://bkt/p/shop/orders/orders-1/payload","lockedUntil":"2025-01-09T03:04:05Z","manifest":'
    '"p/shop/orders/orders-1/manifest.json","namespace":"shop","payloadFormat":"redis-rdb",'
    '"policy":"orders","recoveryPoint":"orders-1","sha256":"' + "ab" * 32 + '","sizeBytes":1000,'
    '"source":{"keys":42,"kind":"Redis","method":"Sync","position":"12345","serverVersion":'
    '"7.2.4"},"sourceTime":"2025-01-02T03:04:06Z","startTime":"2025-01-02T03:04:05Z","storage":'
    '{"kmsKeyId":"arn:k","objectLockMode":"GOVERNANCE","serverSideEncryption":"aws:kms",'
    '"storageClass":"STANDARD_IA"},"storedBytes":500}'
)


def test_an_older_manifest_parses_and_is_written_back_unchanged() -> None:
    manifest = parse_manifest(json.dumps(OLD_MANIFEST), "s3://bkt/old")
    assert isinstance(manifest.source, SourceRecord)
    assert manifest.source.method == "Sync"
    assert manifest.to_json() == OLD_MANIFEST_REWRITTEN


def test_status_source_is_the_shared_shape_without_the_manifest_details() -> None:
    manifest = parse_manifest(json.dumps(OLD_MANIFEST), "s3://bkt/old")
    status = manifest.recovery_point_status()
    assert status["source"] == {
        "kind": "Redis",
        "serverVersion": "7.2.4",
        "position": "12345",
        "keys": 42,
    }
    parsed = RecoveryPointStatus.model_validate(status)
    assert type(parsed.source) is SourceInfo
    # The manifest's record is the status shape plus details, one class hierarchy.
    assert isinstance(manifest.source, SourceInfo)


def test_status_tolerates_newer_fields_specs_and_agent_config_refuse_them() -> None:
    assert RecoveryPointStatus.model_validate({"fromTheFuture": 1}).phase is None
    assert SourceInfo.model_validate({"kind": "Redis", "fromTheFuture": 1}).kind == "Redis"
    with pytest.raises(ValidationError, match="extra"):
        LocalObjectRef.model_validate({"name": "a", "fromTheFuture": 1})
    with pytest.raises(ValidationError, match="extra"):
        StoreConfig.model_validate({"bucket": "bkt", "fromTheFuture": 1})
    with pytest.raises(ValidationError, match="extra"):
        ObjectLock.model_validate({"mode": "GOVERNANCE", "days": 1, "fromTheFuture": 1})


def test_the_agent_store_config_carries_the_policy_s_own_sse_and_lock() -> None:
    location = S3Location.model_validate(
        {
            "bucket": "bkt",
            "prefix": "p",
            "storageClass": "STANDARD_IA",
            "serverSideEncryption": {"type": "aws:kms", "kmsKeyId": "arn:k"},
            "objectLock": {"mode": "GOVERNANCE", "days": 7},
        }
    )
    assert isinstance(location.server_side_encryption, ServerSideEncryption)
    assert isinstance(location.object_lock, ObjectLock)
    wire = store_config(location, "AEGIS_S3_", None).to_wire()
    assert wire == {
        "bucket": "bkt",
        "prefix": "p",
        "storageClass": "STANDARD_IA",
        "serverSideEncryption": {"type": "aws:kms", "kmsKeyId": "arn:k"},
        "objectLock": {"mode": "GOVERNANCE", "days": 7},
        "credentialsEnvPrefix": "",
    }
    # The agent reads back what the operator wrote, as the same shapes.
    assert StoreConfig.model_validate(wire).object_lock == location.object_lock
    assert location.to_api() == {k: v for k, v in wire.items() if k != "credentialsEnvPrefix"}
