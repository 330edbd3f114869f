"""Flags and config files become the same validated config; secrets never come from flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from aegis.agent import cli
from aegis.agent.config import BackupConfig, RestoreConfig, validation_reason
from aegis.agent.s3 import part_size_for

BASE = ["--namespace", "ns", "--policy", "p", "--point", "rp", "--bucket", "bkt-1"]


def backup_config(argv: list[str]) -> BackupConfig:
    ns = cli.build_parser().parse_args(["backup", *argv])
    return BackupConfig.model_validate(cli.settings_from(ns))


def test_postgres_flags() -> None:
    cfg = backup_config(
        [
            "--source",
            "postgres",
            "--host",
            "db",
            "--port",
            "5433",
            "--database",
            "orders",
            "--compression",
            "gzip",
            "--copy",
            "s3://other/pre",
            *BASE,
            "--endpoint",
            "http://127.0.0.1:9000",
            "--object-lock-mode",
            "GOVERNANCE",
            "--object-lock-days",
            "7",
        ]
    )
    assert cfg.postgres is not None and cfg.postgres.port == 5433 and cfg.redis is None
    assert cfg.compression == "Gzip"
    assert cfg.storage.object_lock is not None and cfg.storage.object_lock.days == 7
    assert cfg.copies[0].bucket == "other" and cfg.copies[0].prefix == "pre"
    assert cfg.copies[0].endpoint == "http://127.0.0.1:9000"


def test_config_file_with_flags_winning(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(
        json.dumps(
            {
                "namespace": "ns",
                "policy": "p",
                "recoveryPoint": "rp",
                "redis": {"host": "r", "method": "Bgsave", "rdbPath": "/data/dump.rdb"},
                "storage": {"bucket": "bkt-1", "serverSideEncryption": {"type": "AES256"}},
                "tuning": {"partSize": 16 << 20},
            }
        )
    )
    cfg = backup_config(["--config", str(path), "--port", "7000"])
    assert cfg.redis is not None and cfg.redis.port == 7000 and cfg.redis.host == "r"
    assert cfg.tuning.part_size == 16 << 20
    assert cfg.storage.server_side_encryption is not None


def test_missing_source_names_the_fix() -> None:
    with pytest.raises(ValidationError) as caught:
        backup_config(BASE)
    assert "set exactly one of postgres, redis or command" in validation_reason(caught.value)


def test_bgsave_needs_an_rdb_path() -> None:
    with pytest.raises(ValidationError) as caught:
        backup_config(["--source", "redis", "--host", "r", "--redis-method", "bgsave", *BASE])
    assert "rdbPath" in validation_reason(caught.value)


def test_restore_takes_the_bucket_from_the_manifest_url() -> None:
    ns = cli.build_parser().parse_args(
        ["restore", "--manifest", "s3://bkt-1/a/ns/p/rp", "--target", "redis", "--host", "r"]
    )
    cfg = RestoreConfig.model_validate(cli.settings_from(ns))
    assert cfg.storage.bucket == "bkt-1" and cfg.redis is not None


def test_secret_flags_are_refused_without_echo(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["backup", "--password=hunter2-secret", *BASE])
    out = capsys.readouterr()
    assert code == cli.EXIT_USAGE
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["ok"] is False and result["kind"] == "InvalidUsage"
    assert "PGPASSWORD" in result["reason"]
    assert "hunter2-secret" not in out.out + out.err


def test_bad_usage_is_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["backup", "--source", "mysql"]) == cli.EXIT_USAGE
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["ok"] is False


def test_invalid_config_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "backup",
            "--source",
            "postgres",
            "--host",
            "h",
            "--database",
            "d",
            *BASE,
            "--part-size",
            "1000",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip())
    assert code == cli.EXIT_USAGE
    assert result["reason"].startswith("config: tuning.partSize")


def test_part_sizes_grow_to_reach_the_object_limit() -> None:
    base = 8 << 20
    assert part_size_for(1, base) == base and part_size_for(1000, base) == base
    assert part_size_for(1001, base) == 2 * base
    assert sum(part_size_for(n, base) for n in range(1, 10_001)) > 5 * (1 << 40)
