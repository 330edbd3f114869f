"""The demo's steps, in order (:data:`STEPS`): each makes one part of the examples real in the
sandbox and returns ok or failed with a message. Append a step to grow the story."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aegis.sandbox.demo_render import (
    GROUP,
    NAMESPACE,
    VERSION,
    JsonDict,
    SandboxEndpoints,
    invalid_policies,
    render_documents,
)
from aegis.sandbox.environment import SandboxState

ACCEPT_TIMEOUT_SECONDS = 30.0
BACKUP_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.25
DEFERRED_KINDS = {"Restore"}
"""Applied by their own step, once there is something to restore."""

# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class StepResult:
    ok: bool
    message: str


@dataclass
class DemoContext:
    state: SandboxState
    sandbox_dir: Path
    examples_dir: Path
    check: bool
    manifests_dir: Path
    api: Any = None
    applied: list[JsonDict] = field(default_factory=list)
    deferred: dict[str, Path] = field(default_factory=dict)
    """Kind → rendered file applied by a later step (a Restore needs a finished backup)."""
    invalid: list[tuple[JsonDict, str]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.state.kubeconfig}

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[DemoContext], StepResult]


def heading(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def show(ctx: DemoContext, argv: list[str], *, shown: str | None = None) -> tuple[int, str]:
    """Run a command as the user would, print it and its output; returns (code, output)."""
    print(f"$ {shown or shlex.join(argv)}", flush=True)
    done = subprocess.run(
        argv, env=ctx.env, capture_output=True, text=True, timeout=120, check=False
    )
    output = (done.stdout + done.stderr).rstrip()
    if output:
        print(output, flush=True)
    return done.returncode, output


def kubectl(ctx: DemoContext, *args: str) -> tuple[int, str]:
    return show(ctx, ["kubectl", *args])


def _get(ctx: DemoContext, plural: str, name: str, namespace: str = NAMESPACE) -> JsonDict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        obj: JsonDict = ctx.custom().get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return obj


def _condition(obj: JsonDict | None, kind: str) -> JsonDict | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), None)


def _wait(probe: Callable[[], Any], timeout: float) -> Any:
    """Poll a real observation until it is truthy or ``timeout`` passes; returns the last one."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(POLL_SECONDS)


def _aws_client(ctx: DemoContext, service: str, region: str = "us-east-1") -> Any:
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=ctx.state.moto["endpoint"],
        region_name=region,
        aws_access_key_id=ctx.state.moto["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=ctx.state.moto["AWS_SECRET_ACCESS_KEY"],
    )


SEED_SQL = """
CREATE TABLE IF NOT EXISTS customers (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers,
    total numeric(12, 2) NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS orders_created_at ON orders (created_at);
CREATE TABLE IF NOT EXISTS sessions (
    id text PRIMARY KEY, customer_id bigint, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS cart_events (
    id bigint PRIMARY KEY, session_id text, sku text NOT NULL, qty int NOT NULL,
    at timestamptz NOT NULL);
INSERT INTO customers
    SELECT i, 'Customer ' || i, 'customer' || i || '@shop.test', now() - i * interval '3 hours'
    FROM generate_series(1, 800) i ON CONFLICT DO NOTHING;
INSERT INTO orders
    SELECT i, 1 + (i * 7919) % 800, round((5 + (i * 31) % 400)::numeric + 0.99, 2),
           (ARRAY['paid', 'shipped', 'delivered', 'refunded'])[1 + i % 4],
           now() - i * interval '17 minutes'
    FROM generate_series(1, 5000) i ON CONFLICT DO NOTHING;
INSERT INTO sessions
    SELECT md5('s' || i), 1 + i % 800, now() + interval '1 hour'
    FROM generate_series(1, 300) i ON CONFLICT DO NOTHING;
INSERT INTO cart_events
    SELECT i, md5('s' || (1 + i % 300)), 'SKU-' || (i % 97), 1 + i % 3, now() - i * interval '1 min'
    FROM generate_series(1, 1200) i ON CONFLICT DO NOTHING;
"""


def step_prepare_data(ctx: DemoContext) -> StepResult:
    """Seed PostgreSQL, create the buckets and the hosted zone the examples name."""
    import psycopg
    from botocore.exceptions import ClientError

    pg = ctx.state.postgres
    dsn = (
        f"host={pg['host']} port={pg['port']} dbname={pg['database']} user={pg['user']} "
        f"password={pg['password']} connect_timeout=5"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED_SQL.encode())
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("customers", "orders", "sessions", "cart_events")
        }
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        db_size = size.fetchone()[0]  # type: ignore[index]
    buckets = (
        ("acme-dr-backups", "eu-central-1", True),
        ("acme-dr-backups-replica", "eu-west-1", False),
    )
    for bucket, region, locked in buckets:
        s3 = _aws_client(ctx, "s3", region)
        try:
            s3.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={"LocationConstraint": region},
                # The orders-db policy asks for Object Lock, which S3 allows only on buckets
                # created with it.
                ObjectLockEnabledForBucket=locked,
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
    zone_id = _hosted_zone(ctx, "shop.example.com.")
    print(
        f"PostgreSQL {pg['host']}:{pg['port']}/{pg['database']} ({db_size}): "
        + ", ".join(f"{table} {rows} rows" for table, rows in counts.items())
    )
    print(
        f"S3 buckets {', '.join(b for b, _, _ in buckets)}; Route53 zone shop.example.com "
        f"({zone_id})"
    )
    return StepResult(True, f"{counts['orders']} orders in {pg['database']}, 2 buckets, 1 zone")


def _hosted_zone(ctx: DemoContext, name: str) -> str:
    route53 = _aws_client(ctx, "route53")
    for zone in route53.list_hosted_zones()["HostedZones"]:
        if zone["Name"] == name:
            return str(zone["Id"]).rsplit("/", 1)[-1]
    created = route53.create_hosted_zone(Name=name, CallerReference=secrets.token_hex(8))
    return str(created["HostedZone"]["Id"]).rsplit("/", 1)[-1]


def sandbox_endpoints(state: SandboxState, zone_id: str) -> SandboxEndpoints:
    pg, redis, aws = state.postgres, state.redis, state.moto
    primary = (pg["host"], int(pg["port"]))
    return SandboxEndpoints(
        hosts={
            "orders-db.shop.svc.cluster.local": primary,
            "orders-db-standby.shop.svc.cluster.local": (pg["host"], int(pg["standby_port"])),
            # Restores go to a separate database on the primary: the sandbox has one server.
            "orders-db-staging.shop.svc.cluster.local": primary,
            "cache.shop.svc.cluster.local": (redis["host"], int(redis["port"])),
        },
        url_prefixes={
            # The emulator answers /healthz: it stands in for the shop's API.
            "https://api.shop.example.com": state.api_url,
            # Nothing listens for pages; the step is continueOnError, as a pager outage is.
            "https://hooks.example.com": state.api_url,
        },
        s3_endpoint=aws["endpoint"],
        route53_endpoint=aws["endpoint"],
        hosted_zones={"Z0123456789EXAMPLE": zone_id},
        secret_values={
            "orders-db-credentials": {"username": pg["user"], "password": pg["password"]},
            "cache-credentials": {"username": redis["username"], "password": redis["password"]},
            "backup-encryption-keys": {"2025-01": secrets.token_hex(32)},
            "backup-s3-credentials": {
                "AWS_ACCESS_KEY_ID": aws["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": aws["AWS_SECRET_ACCESS_KEY"],
            },
            "route53-credentials": {
                "AWS_ACCESS_KEY_ID": aws["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": aws["AWS_SECRET_ACCESS_KEY"],
            },
            "oncall-webhook-headers": {"Authorization": f"Bearer {secrets.token_urlsafe(16)}"},
        },
    )


def _write_private(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


def step_render(ctx: DemoContext) -> StepResult:
    files = sorted(ctx.examples_dir.glob("*.yaml"))
    if not files:
        return StepResult(False, f"no *.yaml in {ctx.examples_dir}; pass --examples DIR")
    endpoints = sandbox_endpoints(ctx.state, _hosted_zone(ctx, "shop.example.com."))
    ctx.manifests_dir.mkdir(parents=True, exist_ok=True)
    # Keys are generated once per sandbox: a re-run must not re-key existing backups.
    keys_file = ctx.sandbox_dir / "encryption-keys.json"
    if keys_file.exists():
        endpoints.secret_values["backup-encryption-keys"].update(json.loads(keys_file.read_text()))
    else:
        _write_private(keys_file, json.dumps(endpoints.secret_values["backup-encryption-keys"]))
    problems: list[str] = []
    for path in files:
        docs, found = render_documents(yaml.safe_load_all(path.read_text()), endpoints)
        problems += [f"{path.name}: {p}" for p in found]
        kinds = {str(d.get("kind")) for d in docs}
        if kinds & DEFERRED_KINDS:
            ctx.deferred.update({kind: ctx.manifests_dir / path.name for kind in kinds})
        else:
            ctx.applied += [d for d in docs if str(d.get("apiVersion", "")).startswith(GROUP)]
        header = f"# {path.name} rendered for the sandbox in {ctx.sandbox_dir}\n"
        _write_private(ctx.manifests_dir / path.name, header + yaml.safe_dump_all(docs))
    for problem in problems:
        print(f"  unmapped: {problem}")
    print(f"{len(files)} files from {ctx.examples_dir} rendered into {ctx.manifests_dir}")
    if problems:
        return StepResult(False, f"{len(problems)} placeholder(s) without a sandbox value")
    return StepResult(True, f"{len(files)} files, {len(ctx.applied)} Aegis objects")


def step_apply(ctx: DemoContext) -> StepResult:
    # The namespace and the Secrets first, so that nothing starts while a reference dangles.
    first = [ctx.manifests_dir / n for n in ("00-namespace.yaml", "secrets.yaml")]
    args = [a for p in first if p.exists() for a in ("-f", str(p))]
    code, _ = kubectl(ctx, "apply", "--validate=false", *args)
    later = set(ctx.deferred.values())
    rest = [
        p for p in sorted(ctx.manifests_dir.glob("*.yaml")) if p not in first and p not in later
    ]
    if code == 0:
        code, _ = kubectl(
            ctx, "apply", "--validate=false", *[a for p in rest for a in ("-f", str(p))]
        )
    if code != 0:
        return StepResult(False, f"kubectl apply exited {code}")
    held = ", ".join(p.name for p in sorted(later))
    return StepResult(True, f"applied {ctx.manifests_dir}" + (f" (later: {held})" if held else ""))


def _acceptance(doc: JsonDict) -> tuple[str, str]:
    from aegis.api import KINDS_BY_NAME

    kind = KINDS_BY_NAME[doc["kind"]]
    return kind.plural, kind.acceptance_condition


def _wait_condition(ctx: DemoContext, doc: JsonDict, want: str, timeout: float) -> JsonDict | None:
    """Wait until the acceptance condition has status ``want``; returns the condition seen last."""
    plural, condition = _acceptance(doc)
    name = doc["metadata"]["name"]
    last: dict[str, JsonDict | None] = {"seen": None}

    def probe() -> bool:
        last["seen"] = _condition(_get(ctx, plural, name), condition)
        return last["seen"] is not None and last["seen"].get("status") == want

    _wait(probe, timeout)
    return last["seen"]


def step_valid_accepted(ctx: DemoContext) -> StepResult:
    refused = []
    for doc in ctx.applied:
        waited = time.monotonic()
        seen = _wait_condition(ctx, doc, "True", ACCEPT_TIMEOUT_SECONDS)
        waited = time.monotonic() - waited
        _, condition = _acceptance(doc)
        status = "missing" if seen is None else f"{seen['status']} ({seen.get('reason')})"
        mark = "ok" if seen is not None and seen["status"] == "True" else "!!"
        print(
            f"  {mark} {doc['kind']:<14} {doc['metadata']['name']:<28} {condition}={status}"
            f"  (after {waited:.1f}s)"
        )
        if mark != "ok":
            refused.append(f"{doc['kind']}/{doc['metadata']['name']}: {condition}={status}")
            if seen is not None:
                print(f"       {seen.get('message')}")
    kubectl(ctx, "get", "dr", "-A")
    if refused:
        return StepResult(False, "not accepted: " + "; ".join(refused))
    return StepResult(True, f"{len(ctx.applied)} objects Ready/Accepted=True")


def _warning_events(ctx: DemoContext, name: str) -> list[JsonDict]:
    events = ctx.core().list_namespaced_event(NAMESPACE, _preload_content=False)
    items: list[JsonDict] = json.loads(events.data).get("items") or []
    return [
        e
        for e in items
        if e.get("type") == "Warning" and (e.get("involvedObject") or {}).get("name") == name
    ]


def step_invalid_refused(ctx: DemoContext) -> StepResult:
    template = next(
        (
            d
            for d in ctx.applied
            if d["kind"] == "BackupPolicy" and d["spec"].get("source", {}).get("postgres")
        ),
        None,
    )
    if template is None:
        return StepResult(False, "no PostgreSQL BackupPolicy among the examples to vary")
    ctx.invalid = invalid_policies(template)
    invalid_dir = ctx.sandbox_dir / "manifests-invalid"
    invalid_dir.mkdir(exist_ok=True)
    for doc, what in ctx.invalid:
        path = invalid_dir / f"{doc['metadata']['name']}.yaml"
        path.write_text(f"# wrong on purpose: {what}\n" + yaml.safe_dump(doc))
    code, _ = kubectl(ctx, "apply", "--validate=false", "-f", str(invalid_dir))
    if code != 0:
        return StepResult(False, f"kubectl apply exited {code}: the API refused them")
    short = []
    for doc, what in ctx.invalid:
        name = doc["metadata"]["name"]
        seen = _wait_condition(ctx, doc, "False", ACCEPT_TIMEOUT_SECONDS)
        events = _wait(lambda n=name: _warning_events(ctx, n), ACCEPT_TIMEOUT_SECONDS)  # type: ignore[misc]
        print(f"\n  {name} ({what}):")
        if seen is None or seen.get("status") != "False":
            print(f"    Ready: {seen}")
            short.append(f"{name} not refused")
            continue
        print(f"    Ready=False  reason {seen.get('reason')}\n    message: {seen.get('message')}")
        for event in events or []:
            print(f"    Warning event {event.get('reason')}: {event.get('message')}")
        if not events:
            short.append(f"{name}: no Warning event")
    print()
    kubectl(ctx, "get", "bp", "-n", NAMESPACE)
    kubectl(ctx, "describe", "bp", "-n", NAMESPACE, ctx.invalid[0][0]["metadata"]["name"])
    if short:
        return StepResult(False, "; ".join(short))
    return StepResult(True, f"{len(ctx.invalid)} refused with Ready=False and a Warning event")


def _verify_in_bucket(ctx: DemoContext, status: JsonDict) -> str:
    """Re-measure the stored object: its size and SHA-256 must equal what status claims."""
    location = str(status.get("location") or "")
    bucket, _, key = location.removeprefix("s3://").partition("/")
    digest = hashlib.sha256()
    size = 0
    body = _aws_client(ctx, "s3").get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    if digest.hexdigest() != status.get("sha256") or size != status.get("storedBytes"):
        return (
            f"the bucket disagrees: {size} bytes sha256 {digest.hexdigest()} vs status "
            f"{status.get('storedBytes')} bytes sha256 {status.get('sha256')}"
        )
    return ""


def _wait_point(ctx: DemoContext, name: str) -> StepResult:
    started = time.monotonic()
    final = ("Completed", "Failed", "Corrupted", "Expired")

    def probe() -> JsonDict | None:
        point = _get(ctx, "recoverypoints", name)
        phase = ((point or {}).get("status") or {}).get("phase")
        return point if phase in final else None

    point = _wait(probe, BACKUP_TIMEOUT_SECONDS) or _get(ctx, "recoverypoints", name) or {}
    took = time.monotonic() - started
    status = point.get("status") or {}
    phase = status.get("phase") or "Pending"
    kubectl(ctx, "get", "rp", "-n", NAMESPACE, name)
    if phase != "Completed":
        print(f"  {name}: {phase} after {took:.0f}s: {status.get('message') or '(no message)'}")
        for job in sorted(Path(ctx.state.logs["jobs"], NAMESPACE).glob("*.log")):
            print(f"  job log: {job}")
        kubectl(ctx, "describe", "rp", "-n", NAMESPACE, name)
        return StepResult(
            False, f"{name} {phase} after {took:.0f}s (timeout {BACKUP_TIMEOUT_SECONDS:.0f}s)"
        )
    problem = _verify_in_bucket(ctx, status)
    print(
        f"  location  {status.get('location')}\n"
        f"  size      {status.get('sizeBytes')} bytes logical, {status.get('storedBytes')} "
        f"stored\n"
        f"  sha256    {status.get('sha256')}"
        f"{'' if problem else '  (re-measured from the bucket: equal)'}\n"
        f"  key id    {(status.get('encryption') or {}).get('keyId')}"
    )
    if problem:
        return StepResult(False, f"{name}: {problem}")
    return StepResult(
        True,
        f"{name} Completed, {status.get('storedBytes')} bytes, sha256 "
        f"{str(status.get('sha256'))[:12]}... verified in the bucket",
    )


def step_backup_postgres(ctx: DemoContext) -> StepResult:
    point = next((d for d in ctx.applied if d["kind"] == "RecoveryPoint"), None)
    if point is None:
        return StepResult(False, "no on-demand RecoveryPoint among the examples")
    print(
        f"{point['metadata']['name']} (from examples/recoverypoint-on-demand.yaml) runs a "
        f"backup Job now; waiting up to {BACKUP_TIMEOUT_SECONDS:.0f}s"
    )
    return _wait_point(ctx, point["metadata"]["name"])


def step_backup_redis(ctx: DemoContext) -> StepResult:
    policy = next(
        (d for d in ctx.applied if d["kind"] == "BackupPolicy" and "redis" in d["spec"]["source"]),
        None,
    )
    if policy is None:
        return StepResult(False, "no Redis BackupPolicy among the examples")
    name = policy["metadata"]["name"]
    code, output = show(
        ctx,
        [sys.executable, "-m", "aegis", "backup", name, "-n", NAMESPACE, "--no-wait"],
        shown=f"kubectl aegis backup {name} -n {NAMESPACE} --no-wait",
    )
    created = next(
        (
            line.split("/", 1)[1].split()[0]
            for line in output.splitlines()
            if line.startswith("recoverypoint.")
        ),
        None,
    )
    if created is None:
        return StepResult(False, f"kubectl aegis backup exited {code} without creating a point")
    return _wait_point(ctx, created)


def _count_rows(ctx: DemoContext, database: str, table: str) -> int:
    import psycopg
    from psycopg import sql

    pg = ctx.state.postgres
    with psycopg.connect(
        host=pg["host"],
        port=pg["port"],
        dbname=database,
        user=pg["user"],
        password=pg["password"],
        connect_timeout=5,
        autocommit=True,
    ) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        return int(row.fetchone()[0])  # type: ignore[index]


def step_restore(ctx: DemoContext) -> StepResult:
    path = ctx.deferred.get("Restore")
    if path is None:
        return StepResult(False, "no Restore among the examples")
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Restore")
    name = doc["metadata"]["name"]
    code, _ = kubectl(ctx, "apply", "--validate=false", "-f", str(path))
    if code != 0:
        return StepResult(False, f"kubectl apply exited {code}")
    final = ("Completed", "Failed")
    restore = (
        _wait(
            lambda: (
                (r := _get(ctx, "restores", name))
                and (r.get("status") or {}).get("phase") in final
                and r
            ),
            BACKUP_TIMEOUT_SECONDS,
        )
        or _get(ctx, "restores", name)
        or {}
    )
    kubectl(ctx, "get", "rst", "-n", NAMESPACE, name)
    status = restore.get("status") or {}
    if status.get("phase") != "Completed":
        kubectl(ctx, "describe", "rst", "-n", NAMESPACE, name)
        return StepResult(
            False,
            f"{name} {status.get('phase') or 'Pending'}: {status.get('message') or '(no message)'}",
        )
    for check in status.get("checks") or []:
        print(
            f"  check {check.get('name')}: {check.get('result')} (value {check.get('value')})"
            f"{' ' + check['message'] if check.get('message') else ''}"
        )
    target = doc["spec"]["target"]["postgres"]["database"]
    source_db = ctx.state.postgres["database"]
    restored, source = _count_rows(ctx, target, "orders"), _count_rows(ctx, source_db, "orders")
    print(f"  orders rows: {restored} in {target}, {source} in {source_db} (counted just now)")
    if restored != source:
        return StepResult(False, f"{target}.orders has {restored} rows, the source {source}")
    return StepResult(
        True,
        f"{name} Completed in {status.get('durationSeconds')}s from "
        f"{status.get('recoveryPoint')}; {restored} orders rows, as the source",
    )


def step_drill(ctx: DemoContext) -> StepResult:
    """The example restore DRDrill, run now: a scratch PostgreSQL inside its Job, RTO and
    RPO."""
    drill = next(
        (
            d for d in ctx.applied
            if d["kind"] == "DRDrill" and (d.get("spec") or {}).get("type") == "Restore"
        ),
        None,
    )
    if drill is None:
        return StepResult(False, "no restore DRDrill among the examples")
    name = drill["metadata"]["name"]
    code, _ = show(
        ctx,
        [sys.executable, "-m", "aegis", "drill", "run", name, "-n", NAMESPACE,
         "--timeout", str(BACKUP_TIMEOUT_SECONDS)],
        shown=f"kubectl aegis drill run {name} -n {NAMESPACE}",
    )  # fmt: skip
    kubectl(ctx, "get", "drill", "-n", NAMESPACE, name)
    run = ((_get(ctx, "drdrills", name) or {}).get("status") or {}).get("lastRun") or {}
    if code != 0 or run.get("result") != "Passed":
        outcome = run.get("result") or "did not run"
        return StepResult(False, f"{name} {outcome}: {run.get('message')}")
    return StepResult(
        True,
        f"{name} Passed: RTO {run.get('rtoSeconds')}s, RPO {run.get('rpoSeconds')}s, "
        f"{run.get('recoveryPoint')} Verified",
    )


def step_overview(ctx: DemoContext) -> StepResult:
    """What `kubectl get` shows now: every Aegis object, and the events that explain them."""
    code, _ = kubectl(ctx, "get", "dr", "-A")
    events_code, _ = kubectl(ctx, "get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp")
    if code or events_code:
        return StepResult(False, f"kubectl get exited {code or events_code}")
    return StepResult(True, "kubectl get dr -A and the events of namespace shop")


STEPS: list[Step] = [
    Step("prepare data", step_prepare_data),
    Step("render examples", step_render),
    Step("apply examples", step_apply),
    Step("valid resources accepted", step_valid_accepted),
    Step("invalid resources refused", step_invalid_refused),
    Step("backup PostgreSQL (on demand)", step_backup_postgres),
    Step("backup Redis (kubectl aegis backup)", step_backup_redis),
    Step("restore PostgreSQL into a new database", step_restore),
    Step("restore drill (kubectl aegis drill run)", step_drill),
    Step("overview", step_overview),
]
"""The demo's story, in order. Later steps: failover."""


