"""The command source: the agent's child processes (real `sh`), the API's rules and the Job
the operator builds for it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from aegis.agent import command
from aegis.agent.config import CommandSourceConfig, CommandTargetConfig, RestoreConfig
from aegis.agent.errors import AgentError
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.restore import RestoreSpec
from aegis.reconcilers import backup, tenancy
from aegis.reconcilers import restore as restores
from aegis.settings import Settings

SETTINGS = Settings(
    agent_command=("aegis", "agent"),
    agent_image="aegis:1",
    allowed_job_images=("registry.example.com/aegis-mariadb:*",),
)
ENV = {
    "PATH": "/usr/bin:/bin",
    "AWS_SECRET_ACCESS_KEY": "bucket-secret",
    "AEGIS_KEY_2026-01": "key-material",
    "AEGIS_CMDENV_MYSQL_PWD": "hunter2-pw",
}


def dump_of(script: str, env: list[str] | None = None) -> command.CommandDump:
    return command.CommandDump(
        CommandSourceConfig(dump=["sh", "-c", script], env=env or [], database="shop"), ENV
    )


def run(source: command.CommandDump) -> tuple[bytes, Any]:
    source.start()
    try:
        data = b"".join(source.chunks())
        return data, source.finish()
    finally:
        source.close()


def test_the_dump_is_the_commands_stdout_and_the_record_names_it() -> None:
    data, record = run(dump_of("printf 'CREATE TABLE t;\\n'; echo progress >&2"))
    assert data == b"CREATE TABLE t;\n"
    assert record.kind == "Command" and record.database == "shop"
    assert record.command == ["sh", "-c", "printf 'CREATE TABLE t;\\n'; echo progress >&2"]


def test_the_command_sees_only_its_own_variables_never_the_bucket_or_keys() -> None:
    data, _ = run(dump_of("env | sort", env=["MYSQL_PWD"]))
    seen = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
    assert seen["MYSQL_PWD"] == "hunter2-pw"
    assert "AWS_SECRET_ACCESS_KEY" not in seen and "AEGIS_KEY_2026-01" not in seen
    assert not any(name.startswith("AEGIS_") for name in seen)


def test_a_failing_dump_fails_with_its_stderr_scrubbed() -> None:
    with pytest.raises(AgentError) as failed:
        run(dump_of('echo "access denied for $MYSQL_PWD" >&2; exit 2', env=["MYSQL_PWD"]))
    assert failed.value.kind == "DumpFailed"
    assert "exit 2" in str(failed.value) and "access denied" in str(failed.value)
    assert "hunter2-pw" not in str(failed.value)


def test_a_dump_that_writes_nothing_is_not_a_backup() -> None:
    with pytest.raises(AgentError) as failed:
        run(dump_of("exit 0"))
    assert failed.value.kind == "DumpFailed" and "wrote nothing" in str(failed.value)


def test_a_missing_tool_says_the_image_must_contain_it() -> None:
    source = command.CommandDump(CommandSourceConfig(dump=["no-such-dump-tool"]), ENV)
    with pytest.raises(AgentError) as failed:
        source.start()
    assert failed.value.kind == "CommandNotFound" and "image" in str(failed.value)


def test_a_variable_the_job_did_not_carry_is_named() -> None:
    with pytest.raises(AgentError, match="PGPASSWORD not set"):
        command.command_env(["PGPASSWORD"], ENV)


def restore_cfg(allow_overwrite: bool = False) -> RestoreConfig:
    return RestoreConfig(
        manifest="s3://bkt/p/manifest.json",
        storage={"bucket": "bkt"},
        command={"restore": ["cat"]},
        allow_overwrite=allow_overwrite,
    )


def target(empty_check: list[str] | None) -> CommandTargetConfig:
    return CommandTargetConfig(restore=["cat"], empty_check=empty_check)


def test_without_an_empty_check_only_allow_overwrite_restores() -> None:
    with pytest.raises(AgentError) as refused:
        command.check_target_empty(restore_cfg(), target(None), ENV)
    assert refused.value.kind == "TargetNotEmpty" and "emptyCheck" in str(refused.value)
    command.check_target_empty(restore_cfg(allow_overwrite=True), target(None), ENV)


def test_the_empty_check_counts_on_its_last_line() -> None:
    command.check_target_empty(restore_cfg(), target(["sh", "-c", "echo header; echo 0"]), ENV)
    with pytest.raises(AgentError) as refused:
        command.check_target_empty(restore_cfg(), target(["sh", "-c", "echo 7"]), ENV)
    assert refused.value.kind == "TargetNotEmpty" and "counted 7" in str(refused.value)
    command.check_target_empty(
        restore_cfg(allow_overwrite=True), target(["sh", "-c", "echo 7"]), ENV
    )


@pytest.mark.parametrize(
    ("script", "words"),
    [("echo lots", "printed 'lots'"), ("echo nope >&2; exit 3", "exited 3: nope")],
)
def test_an_empty_check_that_cannot_tell_refuses(script: str, words: str) -> None:
    with pytest.raises(AgentError) as refused:
        command.check_target_empty(
            restore_cfg(allow_overwrite=True), target(["sh", "-c", script]), ENV
        )
    assert refused.value.kind == "TargetCheckFailed" and words in str(refused.value)


def test_the_restore_command_reads_the_dump_on_stdin(tmp_path: Any) -> None:
    out = tmp_path / "restored"
    restorer = command.CommandRestore(["sh", "-c", f"cat > {out}"], {"PATH": "/usr/bin:/bin"})
    restorer.write(b"part one,")
    restorer.write(b" part two")
    restorer.finish()
    assert out.read_bytes() == b"part one, part two" and restorer.written == 18
    failing = command.CommandRestore(["sh", "-c", "cat >/dev/null; exit 4"], {"PATH": "/bin"})
    failing.write(b"x")
    with pytest.raises(AgentError) as failed:
        failing.finish()
    assert failed.value.kind == "RestoreFailed" and "exit 4" in str(failed.value)


# --- the API and the Job ----------------------------------------------------------------------


def policy(**command_fields: Any) -> dict[str, Any]:
    return {
        "schedule": "0 3 * * *",
        "source": {
            "command": {
                "dump": ["mariadb-dump", "shop"],
                "env": [{"name": "MYSQL_PWD", "secretKeyRef": {"name": "db", "key": "pw"}}],
                **command_fields,
            }
        },
        "storage": {"bucket": "bkt"},
        "encryption": {"keySecretRef": {"name": "keys"}},
    }


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AEGIS_KEY_X", "PATH"])
def test_variables_the_agent_sets_are_refused(name: str) -> None:
    spec = policy()
    spec["source"]["command"]["env"][0]["name"] = name
    with pytest.raises(ValidationError, match="set by the agent"):
        BackupPolicySpec.model_validate(spec)


def test_the_command_image_and_job_image_must_agree() -> None:
    spec = {**policy(image="registry.example.com/aegis-mariadb:1"), "job": {"image": "other"}}
    with pytest.raises(ValidationError, match="same image"):
        BackupPolicySpec.model_validate(spec)


def test_the_backup_job_runs_the_command_image_with_secrets_by_reference() -> None:
    spec = BackupPolicySpec.model_validate(policy(image="registry.example.com/aegis-mariadb:1"))
    point = {
        "metadata": {"namespace": "shop", "name": "p1", "uid": "u"},
        "spec": {"policyRef": {"name": "shop"}},
    }
    request = backup.backup_job_request(point, spec, ["2026-01"], SETTINGS)
    assert request.image == "registry.example.com/aegis-mariadb:1"
    config = json.loads(request.args[1])
    assert config["command"] == {"dump": ["mariadb-dump", "shop"], "env": ["MYSQL_PWD"]}
    env = {e.name: (e.ref.name, e.ref.key) for e in request.secret_env}
    assert env["AEGIS_CMDENV_MYSQL_PWD"] == ("db", "pw")


def test_an_unlisted_command_image_is_refused_naming_the_field() -> None:
    spec = BackupPolicySpec.model_validate(policy(image="evil.example.com/miner:1"))
    error = tenancy.refusal(spec, "shop", SETTINGS)
    assert error is not None and error.reason == "ImageNotAllowed"
    assert error.field == "spec.source.command.image"
    allowed = BackupPolicySpec.model_validate(policy(image="registry.example.com/aegis-mariadb:2"))
    assert tenancy.refusal(allowed, "shop", SETTINGS) is None


def test_a_restore_takes_the_policys_commands_and_refuses_without_a_restore_command() -> None:
    spec = BackupPolicySpec.model_validate(
        policy(restore=["mariadb", "shop"], emptyCheck=["sh", "-c", "echo 0"])
    )
    restore = RestoreSpec.model_validate(
        {"recoveryPointRef": {"name": "p1"}, "target": {"command": {}}}
    )
    config = restores.command_target_config(restore.target, spec, "p1")
    assert config is not None
    assert config.restore == ["mariadb", "shop"] and config.empty_check == ["sh", "-c", "echo 0"]
    assert config.env == ["MYSQL_PWD"]
    env = restores.restore_secret_env(restore.target, spec, [])
    assert any(e.name == "AEGIS_CMDENV_MYSQL_PWD" for e in env)
    with pytest.raises(restores.RestoreRefused) as refused:
        restores.command_target_config(
            restore.target, BackupPolicySpec.model_validate(policy()), "p1"
        )
    assert refused.value.reason == "RestoreCommandMissing"


def test_a_check_is_one_of_sql_redis_or_command() -> None:
    with pytest.raises(ValidationError, match="not several"):
        RestoreSpec.model_validate(
            {
                "recoveryPointRef": {"name": "p1"},
                "target": {"command": {}},
                "verify": [
                    {"name": "x", "sql": "SELECT 1", "command": ["true"], "expect": {"min": 1}}
                ],
            }
        )
