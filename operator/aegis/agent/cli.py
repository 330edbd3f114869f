"""`aegis agent backup | restore | drill | verify | catalog`.

Every run ends with one JSON line on stdout: `{"ok": true, ...}` or `{"ok": false,
"reason": ..., "kind": ...}`; failures also print the reason on stderr and exit 1 (2 for bad
usage). Everything printed is scrubbed of secrets. See docs/agent.md for the contract."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from aegis.agent.config import (
    BackupConfig,
    ConfigError,
    LocationConfig,
    RestoreConfig,
    deep_merge,
    environ,
    nest,
    read_config_file,
    read_config_json,
    register_env_secrets,
    validation_reason,
)
from aegis.agent.crypto import Keyring, KeyringError, load_keyring
from aegis.agent.errors import AgentError
from aegis.agent.layout import LayoutError, parse_s3_url
from aegis.agent.log import log
from aegis.agent.scrub import scrub

EXIT_FAILED = 1
EXIT_USAGE = 2
SECRET_FLAGS = ("--password", "--pass", "--secret", "--aws-secret-access-key", "--key")


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _storage_flags(p: argparse.ArgumentParser, write: bool) -> None:
    g = p.add_argument_group("S3")
    g.add_argument("--bucket", dest="storage.bucket", help="bucket name")
    g.add_argument("--prefix", dest="storage.prefix", help="key prefix inside the bucket")
    g.add_argument("--region", dest="storage.region", help="AWS region")
    g.add_argument(
        "--endpoint",
        dest="storage.endpoint",
        help="S3-compatible endpoint URL (default: AEGIS_S3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS)",
    )
    g.add_argument(
        "--addressing-style", dest="storage.addressingStyle", choices=["auto", "path", "virtual"]
    )
    g.add_argument(
        "--credentials-env-prefix",
        dest="storage.credentialsEnvPrefix",
        help="read <PREFIX>AWS_ACCESS_KEY_ID etc. from env",
    )
    if write:
        g.add_argument("--storage-class", dest="storage.storageClass")
        g.add_argument(
            "--sse",
            dest="storage.serverSideEncryption.type",
            choices=["AES256", "aws:kms"],
            help="server-side encryption",
        )
        g.add_argument("--sse-kms-key-id", dest="storage.serverSideEncryption.kmsKeyId")
        g.add_argument(
            "--object-lock-mode",
            dest="storage.objectLock.mode",
            choices=["GOVERNANCE", "COMPLIANCE"],
        )
        g.add_argument("--object-lock-days", dest="storage.objectLock.days", type=int)
        g.add_argument(
            "--copy",
            dest="copies",
            action="append",
            metavar="S3_URL",
            help="also copy to s3://bucket/prefix (same endpoint and credentials; "
            "use --config for other stores); repeatable",
        )


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        dest="_config",
        metavar="FILE",
        help="JSON file with the same settings (flags win)",
    )
    p.add_argument(
        "--config-json",
        dest="_config_json",
        metavar="JSON",
        help="the same settings inline, as the operator passes them in Job args "
        "(non-secret only; flags win, and it wins over --config)",
    )
    p.add_argument(
        "--keys-dir",
        dest="keysDir",
        help="directory of key files named by key id (default AEGIS_KEYS_DIR or /etc/aegis/keys)",
    )
    p.add_argument(
        "--kms-key",
        dest="_kms_keys",
        action="append",
        metavar="ARN",
        help="AWS KMS key (key id, key ARN or alias ARN): backup wraps the data key for it "
        "too; restore/verify open a KMS wrap with it. Repeatable",
    )
    p.add_argument("--progress-seconds", dest="progressSeconds", type=float)
    p.add_argument(
        "--result-file",
        dest="resultFile",
        help="also write the final JSON here (e.g. /dev/termination-log)",
    )
    p.add_argument(
        "--debug",
        dest="_debug",
        action="store_true",
        help="print a (scrubbed) traceback on unexpected errors",
    )
    t = p.add_argument_group("tuning")
    t.add_argument("--chunk-size", dest="tuning.chunkSize", type=int)
    t.add_argument("--part-size", dest="tuning.partSize", type=int)
    t.add_argument("--upload-concurrency", dest="tuning.uploadConcurrency", type=int)
    t.add_argument("--read-size", dest="tuning.readSize", type=int)
    t.add_argument("--compression-level", dest="tuning.compressionLevel", type=int)
    t.add_argument("--compression-threads", dest="tuning.compressionThreads", type=int)
    t.add_argument("--s3-max-attempts", dest="tuning.s3MaxAttempts", type=int)


def _pg_flags(g: argparse._ArgumentGroup, prefix: str) -> None:
    g.add_argument("--host", dest="_host", help="database host")
    g.add_argument("--port", dest="_port", type=int, help="database port")
    g.add_argument("--database", dest=f"{prefix}.database", help="PostgreSQL database")
    g.add_argument("--ssl-mode", dest=f"{prefix}.sslMode")
    g.add_argument("--pg-bin-dir", dest=f"{prefix}.binDir", help="directory of pg_dump/pg_restore")


def build_parser() -> Parser:
    root = Parser(prog="aegis agent", description="The Aegis data mover.")
    sub = root.add_subparsers(dest="_command", required=True, parser_class=Parser)

    b = sub.add_parser("backup", help="dump a source, encrypt it and upload it to S3")
    _common_flags(b)
    b.add_argument("--source", dest="_source", choices=["postgres", "redis"])
    src = b.add_argument_group("source")
    _pg_flags(src, "postgres")
    src.add_argument("--schema", dest="postgres.schemas", action="append")
    src.add_argument("--exclude-table", dest="postgres.excludeTables", action="append")
    src.add_argument("--exclude-table-data", dest="postgres.excludeTableData", action="append")
    src.add_argument(
        "--redis-method",
        dest="redis.method",
        choices=["Sync", "Bgsave"],
        type=lambda v: v.capitalize(),
    )
    src.add_argument("--rdb-path", dest="redis.rdbPath", help="mounted dump.rdb (Bgsave)")
    src.add_argument(
        "--diskless",
        dest="redis.diskless",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Sync: let the master stream the RDB without its disk (capa eof; "
        "default) or not (--no-diskless)",
    )
    src.add_argument("--tls", dest="_tls", action="store_true", help="Redis over TLS")
    b.add_argument("--namespace", dest="namespace")
    b.add_argument("--policy", dest="policy")
    b.add_argument("--point", "--recovery-point", dest="recoveryPoint")
    b.add_argument("--compression", dest="compression", help="zstd (default), gzip or none")
    _storage_flags(b, write=True)

    r = sub.add_parser("restore", help="restore a recovery point into a database")
    _common_flags(r)
    r.add_argument(
        "--manifest", dest="manifest", help="s3://bucket/.../manifest.json or the point's directory"
    )
    r.add_argument("--namespace", dest="namespace")
    r.add_argument("--policy", dest="policy")
    r.add_argument("--point", "--recovery-point", dest="recoveryPoint")
    r.add_argument("--target", dest="_target", choices=["postgres", "redis"])
    tgt = r.add_argument_group("target")
    _pg_flags(tgt, "postgres")
    tgt.add_argument(
        "--create-database", dest="postgres.createDatabase", action="store_const", const=True
    )
    tgt.add_argument("--keep-owner", dest="postgres.keepOwner", action="store_const", const=True)
    tgt.add_argument("--tls", dest="_tls", action="store_true", help="Redis over TLS")
    tgt.add_argument("--redis-db", dest="redis.db", type=int, help="db the Redis checks query")
    tgt.add_argument("--batch-size", dest="redis.batchSize", type=int)
    tgt.add_argument("--redis-server", dest="redis.redisServer")
    r.add_argument("--allow-overwrite", dest="allowOverwrite", action="store_const", const=True)
    r.add_argument(
        "--checks-file",
        dest="_checks_file",
        metavar="FILE",
        help="JSON array of checks (Restore spec.verify) to run afterwards",
    )
    r.add_argument("--work-dir", dest="workDir")
    _storage_flags(r, write=False)

    d = sub.add_parser(
        "drill",
        help="restore a recovery point into a scratch server (or a target), check it, "
        "and measure each phase",
    )
    _common_flags(d)
    d.add_argument("--manifest", dest="manifest", help="s3://bucket/.../manifest.json")
    d.add_argument("--kind", dest="kind", choices=["postgres", "redis"])
    d.add_argument("--postgres-major", dest="postgresMajor", type=int)
    d.add_argument("--work-dir", dest="workDir")
    _storage_flags(d, write=False)

    for name, text in (
        ("verify", "authenticate a stored backup without restoring it"),
        ("catalog", "list the manifests under s3://bucket/prefix"),
    ):
        v = sub.add_parser(name, help=text)
        _common_flags(v)
        v.add_argument("location", help="s3:// URL")
        _storage_flags(v, write=False)
    for parser in (b, r, d, *[sub.choices[n] for n in ("verify", "catalog")]):
        _readable_metavars(parser)
    return root


def _readable_metavars(parser: argparse.ArgumentParser) -> None:
    """`--part-size PARTSIZE` in help, not the dotted config path used as dest."""
    for action in parser._actions:
        if (
            action.option_strings
            and action.metavar is None
            and action.nargs != 0
            and not action.choices
        ):
            action.metavar = action.dest.rsplit(".", 1)[-1].lstrip("_").upper()


def _refuse_secret_flags(argv: Sequence[str]) -> None:
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in SECRET_FLAGS or flag.endswith("-password"):
            raise UsageError(
                f"{flag}: secrets are never taken from arguments; set PGPASSWORD / "
                "AEGIS_PG_PASSWORD, AEGIS_REDIS_PASSWORD / REDISCLI_AUTH, AWS_SECRET_ACCESS_KEY, "
                "or mount the key Secret at --keys-dir"
            )


def _copy_store(url: str, storage: dict[str, Any]) -> dict[str, Any]:
    bucket, prefix = parse_s3_url(url)
    inherited = {
        k: v
        for k, v in storage.items()
        if k in ("region", "endpoint", "credentialsEnvPrefix", "addressingStyle")
    }
    return {**inherited, "bucket": bucket, "prefix": prefix}


def settings_from(ns: argparse.Namespace) -> dict[str, Any]:
    """Flags → the config dict (merged over --config)."""
    flat = {k: v for k, v in vars(ns).items() if not k.startswith("_")}
    copies = flat.pop("copies", None)
    flags = nest(flat)
    command = ns._command
    kind = getattr(ns, "_source", None) or getattr(ns, "_target", None)
    base = deep_merge(read_config_file(ns._config), read_config_json(ns._config_json))
    if kind is None:
        kind = next((k for k in ("postgres", "redis") if k in base or k in flags), None)
    for other in ("postgres", "redis"):
        if other != kind:
            flags.pop(other, None)
    if kind is not None and command in ("backup", "restore"):
        endpoint = flags.setdefault(kind, {})
        if ns._host is not None:
            endpoint["host"] = ns._host
        if ns._port is not None:
            endpoint["port"] = ns._port
        if kind == "redis" and ns._tls:
            endpoint["tls"] = True
    merged = deep_merge(base, flags)
    if getattr(ns, "_kms_keys", None):
        merged["kmsKeys"] = list(merged.get("kmsKeys", [])) + [
            {"keyId": key} for key in ns._kms_keys
        ]
    if copies:
        storage = merged.get("storage", {})
        merged["copies"] = list(merged.get("copies", [])) + [
            _copy_store(url, storage) for url in copies
        ]
    if command == "restore" and ns._checks_file:
        merged["checks"] = _read_json(ns._checks_file, "--checks-file")
    if command == "restore" and "manifest" in merged and "bucket" not in merged.get("storage", {}):
        merged.setdefault("storage", {})["bucket"] = parse_s3_url(merged["manifest"])[0]
    if command == "drill" and "manifest" in merged and "bucket" not in merged.get("storage", {}):
        merged.setdefault("storage", {})["bucket"] = parse_s3_url(merged["manifest"])[0]
    if command in ("verify", "catalog"):
        merged["location"] = ns.location
        if "bucket" not in merged.get("storage", {}):
            merged.setdefault("storage", {})["bucket"] = parse_s3_url(ns.location)[0]
    return merged


def _read_json(path: str, flag: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{flag} {path}: not valid JSON ({error.msg})") from None


def model_for(command: str) -> type[BaseModel]:
    """The command's config model. The drill's is imported only for a drill: it brings the
    restore code and its clients, which a backup Job does not load (start-up time)."""
    if command == "drill":
        from aegis.agent.drill import DrillConfig

        return DrillConfig
    return MODELS[command]


MODELS: dict[str, type[BaseModel]] = {
    "backup": BackupConfig,
    "restore": RestoreConfig,
    "verify": LocationConfig,
    "catalog": LocationConfig,
}


def emit(result: dict[str, Any], result_file: str | None) -> None:
    line = scrub(json.dumps(result, separators=(",", ":"), default=str))
    print(line, flush=True)
    if result_file:
        try:
            Path(result_file).write_text(line + "\n")
        except OSError as error:
            log(f"cannot write the result to {result_file}: {error.strerror}")


def tame_malloc() -> None:
    """Big buffers (parts, chunks) straight from mmap and back to the OS when freed, and few
    malloc arenas: keeps the agent's RSS flat however large the backup (glibc only)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD (a fixed value: no dynamic growth)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    tame_malloc()
    env = environ()
    register_env_secrets(env)
    command = argv[0] if argv else "agent"
    result_file: str | None = env.get("AEGIS_RESULT_FILE")
    debug = "--debug" in argv
    try:
        _refuse_secret_flags(argv)
        ns = build_parser().parse_args(argv)
        command = ns._command
        settings = settings_from(ns)
        result_file = settings.get("resultFile") or result_file
        try:
            cfg: Any = model_for(command).model_validate(settings)
        except ValidationError as error:
            raise ConfigError(validation_reason(error)) from None
        result = dispatch(command, cfg, env)
    except UsageError as error:
        return fail(command, str(error), "InvalidUsage", EXIT_USAGE, result_file)
    except (ConfigError, LayoutError) as error:
        return fail(command, str(error), "InvalidConfig", EXIT_USAGE, result_file)
    except AgentError as error:
        return fail(command, error.reason, error.kind, EXIT_FAILED, result_file)
    except KeyringError as error:
        return fail(command, str(error), "KeyInvalid", EXIT_FAILED, result_file)
    except KeyboardInterrupt:
        return fail(command, "interrupted", "Interrupted", EXIT_FAILED, result_file)
    except Exception as error:
        if debug:
            log(traceback.format_exc())
        return fail(
            command,
            f"internal error: {type(error).__name__}: {error}",
            "InternalError",
            EXIT_FAILED,
            result_file,
        )
    emit(result, result_file)
    if not result.get("ok", False):
        log(str(result.get("reason", "failed")))
        return EXIT_FAILED
    return 0


def fail(command: str, reason: str, kind: str, code: int, result_file: str | None) -> int:
    reason = scrub(" ".join(reason.split()))
    log(f"{command} failed: {reason}")
    emit({"ok": False, "command": command, "kind": kind, "reason": reason}, result_file)
    return code


def dispatch(command: str, cfg: Any, env: dict[str, str]) -> dict[str, Any]:
    # Each command imports only its own code: a backup Job never loads the restore's.
    def keyring() -> Keyring:
        return load_keyring(cfg.keys_dir, env)

    if command == "backup":
        from aegis.agent import backup

        return backup.run_backup(cfg, env, keyring)
    if command == "drill":
        from aegis.agent import drill

        return drill.run_drill(cfg, env, keyring)
    from aegis.agent import restore

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "restore": lambda: restore.run_restore(cfg, env, keyring),
        "verify": lambda: restore.run_verify(cfg, env, keyring),
        "catalog": lambda: restore.run_catalog(cfg, env),
    }
    return runners[command]()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
