"""`kubectl aegis restore SOURCE --to-... [-n NS]`: create a Restore and follow it to the end.

SOURCE is a RecoveryPoint (that backup) or a BackupPolicy (its newest Completed point,
preferring a Verified one). When both kinds have that name, say which: `rp/NAME` or
`policy/NAME`.

PostgreSQL target:
  --to-postgres-host HOST --to-database DB --user-secret SECRET/KEY --password-secret SECRET/KEY
  [--to-port 5432] [--ssl-mode prefer] [--create-database] [--clean]
Redis target:
  --to-redis-host HOST [--to-port 6379] [--password-secret SECRET/KEY]
  [--username-secret SECRET/KEY] [--tls] [--redis-db N]

A non-empty target is refused (and left untouched) unless --allow-overwrite is given.
Checks: --verify-matches-backup (PostgreSQL row counts equal the backup's), --verify-file
FILE (a YAML or JSON list of checks, as Restore.spec.verify).

Examples:
  kubectl aegis restore orders --to-postgres-host orders-db.prod.svc --to-database orders_new \\
      --user-secret orders-db/username --password-secret orders-db/password \\
      --create-database --verify-matches-backup
  kubectl aegis restore rp/orders-20260301030000 --to-redis-host cache.prod.svc \\
      --password-secret cache/password --allow-overwrite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aegis import GROUP, VERSION

PLURAL = "restores"
FOLLOW_INTERVAL = 1.0
POINT_PREFIXES = ("rp/", "recoverypoint/", "recoverypoints/")
POLICY_PREFIXES = ("policy/", "bp/", "backuppolicy/", "backuppolicies/")


class UsageError(ValueError):
    """Bad flags; the message names the flag and the fix."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl aegis restore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="RecoveryPoint or BackupPolicy name (rp/NAME, policy/NAME)")
    p.add_argument("-n", "--namespace", default=None, help="namespace of the source")
    p.add_argument("--name", help="name of the Restore (default <source>-restore-<utc time>)")
    pg = p.add_argument_group("PostgreSQL target")
    pg.add_argument("--to-postgres-host", metavar="HOST")
    pg.add_argument("--to-database", metavar="DB")
    pg.add_argument("--ssl-mode", default=None, help="libpq sslmode (default prefer)")
    pg.add_argument("--user-secret", metavar="SECRET/KEY", help="Secret key of the user name")
    pg.add_argument("--create-database", action="store_true", help="create it when absent")
    pg.add_argument("--clean", action="store_true", help="drop restored objects first")
    rd = p.add_argument_group("Redis target")
    rd.add_argument("--to-redis-host", metavar="HOST")
    rd.add_argument("--username-secret", metavar="SECRET/KEY", help="Secret key of the ACL user")
    rd.add_argument("--tls", action="store_true", help="connect with TLS")
    rd.add_argument("--redis-db", type=int, default=None, help="logical db the checks query")
    both = p.add_argument_group("both targets")
    both.add_argument("--to-port", type=int, default=None)
    both.add_argument("--password-secret", metavar="SECRET/KEY", help="Secret key of the password")
    both.add_argument(
        "--allow-overwrite", action="store_true", help="allow restoring into a non-empty target"
    )
    both.add_argument(
        "--verify-matches-backup",
        action="store_true",
        help="check that every table's row count equals the backup's (PostgreSQL)",
    )
    both.add_argument("--verify-file", metavar="FILE", help="YAML/JSON list of checks")
    p.add_argument("--no-wait", action="store_true", help="create the Restore and return")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to follow")
    p.add_argument("--dry-run", action="store_true", help="print the Restore, create nothing")
    return p


def secret_ref(value: str, flag: str) -> dict[str, str]:
    name, sep, key = value.partition("/")
    if not sep or not name or not key:
        raise UsageError(f"{flag} {value!r}: write SECRET/KEY, e.g. {flag} orders-db/password")
    return {"name": name, "key": key}


def target_spec(args: argparse.Namespace) -> dict[str, Any]:
    """spec.target from the --to-* flags."""
    if bool(args.to_postgres_host) == bool(args.to_redis_host):
        raise UsageError("give exactly one target: --to-postgres-host or --to-redis-host")
    if args.to_postgres_host:
        missing = [
            flag
            for flag, value in (
                ("--to-database", args.to_database),
                ("--user-secret", args.user_secret),
                ("--password-secret", args.password_secret),
            )
            if not value
        ]
        if missing:
            raise UsageError(f"a PostgreSQL target needs {', '.join(missing)}")
        postgres: dict[str, Any] = {
            "host": args.to_postgres_host,
            "database": args.to_database,
            "userSecretRef": secret_ref(args.user_secret, "--user-secret"),
            "passwordSecretRef": secret_ref(args.password_secret, "--password-secret"),
            "createDatabase": args.create_database,
            "clean": args.clean,
        }
        if args.to_port is not None:
            postgres["port"] = args.to_port
        if args.ssl_mode:
            postgres["sslMode"] = args.ssl_mode
        return {"postgres": postgres}
    pg_only = [
        flag
        for flag, value in (
            ("--to-database", args.to_database),
            ("--user-secret", args.user_secret),
            ("--create-database", args.create_database),
            ("--clean", args.clean),
            ("--ssl-mode", args.ssl_mode),
        )
        if value
    ]
    if pg_only:
        raise UsageError(f"{', '.join(pg_only)}: PostgreSQL flags, but the target is Redis")
    redis: dict[str, Any] = {"host": args.to_redis_host, "tls": args.tls}
    if args.to_port is not None:
        redis["port"] = args.to_port
    if args.password_secret:
        redis["passwordSecretRef"] = secret_ref(args.password_secret, "--password-secret")
    if args.username_secret:
        redis["usernameSecretRef"] = secret_ref(args.username_secret, "--username-secret")
    if args.redis_db is not None:
        redis["db"] = args.redis_db
    return {"redis": redis}


def read_checks(path: str) -> list[dict[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise UsageError(f"--verify-file {path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise UsageError(f"--verify-file {path}: not YAML or JSON ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("verify"), list):
        data = data["verify"]
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise UsageError(
            f"--verify-file {path}: must be a list of checks, e.g. "
            "[{name: orders, sql: 'SELECT count(*) FROM orders', expect: {min: 1}}]"
        )
    return data


def verify_spec(args: argparse.Namespace) -> list[dict[str, Any]]:
    checks = read_checks(args.verify_file) if args.verify_file else []
    if args.verify_matches_backup:
        checks.append({"name": "matches-backup", "expect": {"matchesBackup": True}})
    return checks


def restore_spec(args: argparse.Namespace, source_kind: str, source: str) -> dict[str, Any]:
    """The Restore's spec, validated by the same model the operator uses."""
    from aegis.api.restore import RestoreSpec
    from aegis.reconcilers.validation import SpecError, parse_spec

    ref = "recoveryPointRef" if source_kind == "RecoveryPoint" else "policyRef"
    spec: dict[str, Any] = {ref: {"name": source}, "target": target_spec(args)}
    if args.allow_overwrite:
        spec["allowOverwrite"] = True
    checks = verify_spec(args)
    if checks:
        spec["verify"] = checks
    parsed = parse_spec(RestoreSpec, spec)
    if isinstance(parsed, SpecError):
        raise UsageError(parsed.message)
    return spec


def restore_name(source: str, now: dt.datetime) -> str:
    """`<source>-restore-<yyyymmddhhmmss>` (UTC), at most 253 characters."""
    from aegis.reconcilers import naming

    suffix = f"restore-{naming.format_tick(now)}"
    return f"{naming.fit(source, naming.MAX_OBJECT_NAME - len(suffix) - 1)}-{suffix}"


def split_source(source: str) -> tuple[str | None, str]:
    """An explicit kind prefix, if any, and the name."""
    lowered = source.lower()
    for prefixes, kind in ((POINT_PREFIXES, "RecoveryPoint"), (POLICY_PREFIXES, "BackupPolicy")):
        for prefix in prefixes:
            if lowered.startswith(prefix):
                return kind, source[len(prefix) :]
    return None, source


def resolve_source(api: Any, namespace: str, source: str) -> tuple[str, str]:
    """(kind, name) of the source, looking the name up as both kinds unless prefixed."""
    from kubernetes.client.exceptions import ApiException

    wanted, name = split_source(source)
    found = []
    for kind, plural in (("RecoveryPoint", "recoverypoints"), ("BackupPolicy", "backuppolicies")):
        if wanted not in (None, kind):
            continue
        try:
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                continue
            raise
        found.append(kind)
    if not found:
        what = wanted or "RecoveryPoint or BackupPolicy"
        raise UsageError(
            f"no {what} named {name} in namespace {namespace} "
            "(kubectl get recoverypoints,backuppolicies -n NAMESPACE)"
        )
    if len(found) > 1:
        raise UsageError(
            f"{name} is both a RecoveryPoint and a BackupPolicy in {namespace}: "
            f"write rp/{name} or policy/{name}"
        )
    return found[0], name


def main(argv: Sequence[str]) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    from aegis.kubectl import api_client, default_namespace

    args = parser().parse_args(list(argv))
    try:
        target_spec(args)  # flag mistakes first, before asking the API anything
        namespace = args.namespace or default_namespace()
        api = client.CustomObjectsApi(api_client())
        kind, source = resolve_source(api, namespace, args.source)
        spec = restore_spec(args, kind, source)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ConfigException as error:
        print(f"error: no Kubernetes API configured ({error}); set KUBECONFIG", file=sys.stderr)
        return 1
    except HTTPError as error:
        print(f"error: cannot reach the Kubernetes API: {error}", file=sys.stderr)
        return 1
    name = args.name or restore_name(source, dt.datetime.now(dt.UTC))
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Restore",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(body, sort_keys=False), end="")
        return 0
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as error:
        if error.status == 409:
            print(
                f"error: Restore {namespace}/{name} exists already; pick another --name",
                file=sys.stderr,
            )
            return 1
        print(f"error: the API refused the Restore: {api_message(error)}", file=sys.stderr)
        return 1
    print(f"restore.{GROUP}/{name} created ({kind} {source})", flush=True)
    if args.no_wait:
        return 0
    return follow(api, namespace, name, args.timeout)


def api_message(error: Any) -> str:
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


def progress_line(status: dict[str, Any]) -> str:
    phase = status.get("phase") or "Pending"
    message = status.get("message") or ""
    return f"{phase}: {message}" if message else phase


def follow(api: Any, namespace: str, name: str, timeout: float, out: Any = None) -> int:
    """Print every change of phase/message until the Restore ends; then its summary."""
    from kubernetes.client.exceptions import ApiException

    out = out or sys.stdout
    began = time.monotonic()
    shown = ""
    while time.monotonic() - began < timeout:
        try:
            restore = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise
            print(f"error: Restore {namespace}/{name} was deleted", file=sys.stderr)
            return 1
        status = restore.get("status") or {}
        line = progress_line(status)
        if line != shown:
            print(f"[{time.monotonic() - began:6.1f}s] {line}", file=out, flush=True)
            shown = line
        if status.get("phase") in ("Completed", "Failed"):
            print(summary(status), file=out, flush=True)
            return 0 if status["phase"] == "Completed" else 1
        # Following a resource is polling its status; the interval is the display's refresh.
        time.sleep(FOLLOW_INTERVAL)
    print(f"error: Restore {name} did not finish within {timeout:.0f}s", file=sys.stderr)
    return 1


def summary(status: dict[str, Any]) -> str:
    """The end of the display: point, size, measured duration and every check."""
    from aegis.display import duration as human_duration
    from aegis.display import size as human_bytes

    lines = [f"Restore {status.get('phase')}"]
    if status.get("recoveryPoint"):
        lines.append(f"  recovery point  {status['recoveryPoint']}")
    if status.get("restoredBytes") is not None:
        lines.append(f"  restored        {human_bytes(int(status['restoredBytes']))}")
    duration = status.get("durationSeconds")
    lines.append(
        f"  duration        {human_duration(float(duration))}"
        if duration is not None
        else "  duration        -"
    )
    checks = status.get("checks") or []
    if checks:
        lines.append("  checks")
        width = max(len(str(c.get("name", ""))) for c in checks)
        for check in checks:
            value = check.get("value")
            detail = "  ".join(
                part
                for part in (
                    f"value={value}" if value is not None else "",
                    str(check.get("message") or ""),
                )
                if part
            )
            lines.append(
                f"    {str(check.get('result', '?')).upper():7} "
                f"{str(check.get('name')).ljust(width)}  {detail}".rstrip()
            )
    elif status.get("phase") == "Completed":
        lines.append("  checks          none requested")
    if status.get("phase") == "Failed" and status.get("message"):
        lines.append(f"  reason          {status['message']}")
    return "\n".join(lines)
