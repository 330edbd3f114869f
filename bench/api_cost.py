"""API-cost benchmark (issue 15): what Aegis asks of the API server when nothing changes.

    .venv/bin/python bench/api_cost.py                       # 100 policies, 10 plans, 3 min
    .venv/bin/python bench/api_cost.py --policies 1000 --plans 20 --minutes 2
    .venv/bin/python bench/api_cost.py --smoke               # 20 policies, 2 plans, 30 s (CI)

N BackupPolicies and M FailoverPlans at rest against the API emulator, the operator as its
own process. Half the policies are active on a yearly schedule (`0 0 1 1 *`: nothing fires
in the window), half are suspended on a per-minute schedule (every tick is skipped); each
has one Completed RecoveryPoint (shaped as catalog sync imports it: its RPO grows while we
watch, as a real policy's does between backups) and an RPO objective. The plans are Manual,
probe a real PostgreSQL every 10 s through a credentials Secret on both sites, and never
fail over. PostgreSQL and moto (the bucket) are real servers on 127.0.0.1.

After a warm-up (every policy and plan has been seen and written once), the emulator's
record of the operator's requests (it runs as its own ServiceAccount: the emulator counts
by identity, verb and resource, `ApiServer.usage`) is cleared, and counted again after
`--minutes`. Targets at rest: 0 GETs per minute, and at most 1 write (create, update,
patch, delete) per object per minute: per kind on average, and per object at most (the
status writes of each policy and plan are also counted one by one from a watch).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from kubernetes import client  # noqa: E402

from aegis.sandbox.apiserver import ApiServer  # noqa: E402
from aegis.sandbox.pytest_fixtures import make_api  # noqa: E402
from aegis.sandbox.servers import MotoServer, PostgresServer  # noqa: E402

GROUP, VERSION = "dr.aegis.dev", "v1alpha1"
NAMESPACE = "bench"
OPERATOR_NS, OPERATOR_SA = "aegis-system", "aegis-operator"
WRITES = ("create", "update", "patch", "delete", "deletecollection")
TARGET_WRITES_PER_OBJECT_MIN, TARGET_GETS_MIN = 1.0, 0.0


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_spec(pg: PostgresServer, moto: MotoServer, suspended: bool) -> dict[str, Any]:
    return {
        "schedule": "* * * * *" if suspended else "0 0 1 1 *",
        "suspend": suspended,
        "source": {
            "postgres": {
                "host": pg.host,
                "port": pg.port,
                "database": "postgres",
                "userSecretRef": {"name": "db", "key": "username"},
                "passwordSecretRef": {"name": "db", "key": "password"},
            }
        },
        "storage": {
            "bucket": "bench",
            "endpoint": moto.endpoint,
            "credentialsSecretRef": {"name": "s3"},
        },
        "encryption": {"keySecretRef": {"name": "keys"}},
        "objectives": {"rpoSeconds": 86400},
    }


def imported_point(policy: str, now: dt.datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Completed point as catalog sync imports it (body, status)."""
    source = now - dt.timedelta(minutes=10)
    name = f"{policy}-{source:%Y%m%d%H%M%S}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecoveryPoint",
        "metadata": {
            "name": name,
            "labels": {"dr.aegis.dev/policy": policy},
            "annotations": {"dr.aegis.dev/created-by": "catalog-sync"},
        },
        "spec": {"policyRef": {"name": policy}, "trigger": "Imported"},
    }
    status = {
        "phase": "Completed",
        "sourceTime": stamp(source),
        "startTime": stamp(source),
        "completionTime": stamp(source + dt.timedelta(seconds=5)),
        "manifest": f"s3://bench/{NAMESPACE}/{policy}/{name}/manifest.json",
    }
    return body, status


def plan_spec(pg: PostgresServer) -> dict[str, Any]:
    check = {
        "host": pg.host,
        "port": pg.port,
        "database": "postgres",
        "userSecretRef": {"name": "db", "key": "username"},
        "passwordSecretRef": {"name": "db", "key": "password"},
    }

    def site(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "checks": [{"name": "db", "postgres": check}],
        }

    return {
        "mode": "Manual",
        "primary": site("primary"),
        "secondary": site("secondary"),
        "steps": [{"name": "page", "webhook": {"url": "http://127.0.0.1:9/never"}}],
    }


class StatusWrites:
    """MODIFIED events per object of the watched kinds, from a raw watch as the admin."""

    def __init__(self, api: Any, plural: str) -> None:
        self.api, self.plural = api, plural
        self.counts: Counter[str] = Counter()
        self.counting = False
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:  # the emulator stopped at the end of the run
            return

    def _watch(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        while True:
            response = custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                NAMESPACE,
                self.plural,
                watch=True,
                timeout_seconds=3600,
                _preload_content=False,
            )
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=False):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "MODIFIED":
                        with self.lock:
                            if self.counting:
                                self.counts[event["object"]["metadata"]["name"]] += 1

    def start(self) -> None:
        with self.lock:
            self.counts.clear()
            self.counting = True

    def stop(self) -> Counter[str]:
        with self.lock:
            self.counting = False
            return Counter(self.counts)


def operator_kubeconfig(server: ApiServer, api: Any, workdir: Path) -> tuple[Path, str]:
    """A ServiceAccount of its own for the operator (bound to cluster-admin: the chart's
    least privilege is tests/e2e/test_rbac_least_privilege.py's business), so that the
    emulator's usage record of that identity is the operator's requests alone."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace({"metadata": {"name": OPERATOR_NS}})
    core.create_namespaced_service_account(OPERATOR_NS, {"metadata": {"name": OPERATOR_SA}})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": "aegis-bench-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}],
        }
    )
    token = server.issue_token(OPERATOR_NS, OPERATOR_SA, expiration_seconds=24 * 3600)
    path = server.write_kubeconfig(workdir / "operator.kubeconfig", token=token)
    return path, f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"


def wait_until(what: str, probe: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--plans", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=3.0, help="the measured window")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds after every object was written once, before counting",
    )
    parser.add_argument("--smoke", action="store_true", help="20 policies, 2 plans, 30 s")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a target is missed (the smoke run only proves the benchmark works)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.policies, args.plans, args.minutes, args.warmup = 20, 2, 0.5, 20.0

    workdir = Path(tempfile.mkdtemp(prefix="aegis-bench-apicost-"))
    server = ApiServer(crd_dir=ROOT / "crds").start()
    server.write_kubeconfig(workdir / "kubeconfig")
    api = make_api(workdir / "kubeconfig", server)
    pg = PostgresServer.start()
    moto = MotoServer.start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        moto.s3_client().create_bucket(Bucket="bench")
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        for name, data in (
            ("db", {"username": pg.user, "password": pg.password}),
            ("keys", {"k1": base64.b64encode(secrets.token_bytes(32)).decode()}),
            ("s3", {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}),
        ):
            core.create_namespaced_secret(
                NAMESPACE,
                {"metadata": {"name": name}, "data": {k: b64(v) for k, v in data.items()}},
            )
        kubeconfig, user = operator_kubeconfig(server, api, workdir)

        started = time.monotonic()
        now = dt.datetime.now(dt.UTC)
        policies = [f"p{i:04d}" for i in range(args.policies)]
        for i, name in enumerate(policies):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                NAMESPACE,
                "backuppolicies",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "BackupPolicy",
                    "metadata": {"name": name},
                    "spec": policy_spec(pg, moto, suspended=i % 2 == 1),
                },
            )
            body, status = imported_point(name, now)
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "recoverypoints", body
            )
            custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                NAMESPACE,
                "recoverypoints",
                body["metadata"]["name"],
                {"status": status},
            )
        plans = [f"fp{i:03d}" for i in range(args.plans)]
        for name in plans:
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                NAMESPACE,
                "failoverplans",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "FailoverPlan",
                    "metadata": {"name": name},
                    "spec": plan_spec(pg),
                },
            )
        print(
            f"created {args.policies} policies (+1 point each) and {args.plans} plans in "
            f"{time.monotonic() - started:.1f}s",
            flush=True,
        )

        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "operator"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "KUBECONFIG": str(kubeconfig),
            "AEGIS_METRICS_PORT": "0",
            "AEGIS_HEALTH_PORT": "0",
            "AEGIS_LOG_FORMAT": "text",
            "AEGIS_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "AEGIS_ALLOW_LOOPBACK_ENDPOINTS": "true",
            # as the chart sets it (mallocArenaMax); MALLOC_ARENA_MAX= in the environment overrides
            "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
        }
        log = open(workdir / "operator.log", "wb")  # noqa: SIM115 - closed with the process
        operator = subprocess.Popen(
            [sys.executable, "-m", "aegis", "operator"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        watches = {
            plural: StatusWrites(api, plural) for plural in ("backuppolicies", "failoverplans")
        }

        def all_written() -> bool:
            items = [
                *custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "backuppolicies")[
                    "items"
                ],
                *custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "failoverplans")[
                    "items"
                ],
            ]
            return all((o.get("status") or {}).get("conditions") for o in items)

        wait_until(
            "every policy and plan written once", all_written, timeout=120 + args.policies * 0.5
        )
        settled = time.monotonic() - started
        print(
            f"every object has a status {settled:.0f}s after start; warming up {args.warmup:.0f}s",
            flush=True,
        )
        time.sleep(args.warmup)
        if operator.poll() is not None:
            raise RuntimeError(
                f"the operator exited ({operator.returncode}); see {workdir / 'operator.log'}"
            )

        server.handler.access.usage.clear(user)
        for watch in watches.values():
            watch.start()
        window_start = time.monotonic()
        time.sleep(args.minutes * 60)
        usage = server.usage(user)
        per_object = {plural: watch.stop() for plural, watch in watches.items()}
        minutes = (time.monotonic() - window_start) / 60
        rss = rss_mib(operator.pid)
        return report(args, usage, per_object, minutes, rss, workdir)
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
        moto.stop()
        pg.stop()
        server.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(
    args: argparse.Namespace,
    usage: dict[Any, int],
    per_object: dict[str, Counter[str]],
    minutes: float,
    rss: float,
    workdir: Path,
) -> int:
    objects = {
        "backuppolicies": args.policies,
        "failoverplans": args.plans,
        "recoverypoints": args.policies,
    }
    rows: Counter[tuple[str, str]] = Counter()
    refused = 0
    for access, count in usage.items():
        if not access.allowed:
            refused += count
        rows[(access.verb, access.resource_name or access.path)] += count
    print()
    print(
        f"policies {args.policies} (half suspended), plans {args.plans}, "
        f"window {minutes:.2f} min, operator RSS {rss:.0f} MiB, "
        f"load average {os.getloadavg()[0]:.1f} (log {workdir / 'operator.log'})"
    )
    print(f"{'verb':<8} {'resource':<32} {'requests':>9} {'per min':>9} {'/object/min':>12}")
    for (verb, resource), count in sorted(rows.items(), key=lambda kv: (-kv[1], kv[0])):
        base = objects.get(resource.split("/")[0])
        per = f"{count / minutes / base:.3f}" if base and verb in WRITES else ""
        print(f"{verb:<8} {resource:<32} {count:>9} {count / minutes:>9.1f} {per:>12}")
    gets = sum(c for (verb, _), c in rows.items() if verb == "get") / minutes
    writes = sum(c for (verb, _), c in rows.items() if verb in WRITES) / minutes
    print(f"GETs per minute                  {gets:.1f}   (target {TARGET_GETS_MIN:.0f})")
    print(f"writes per minute                {writes:.1f}")
    ok = gets <= TARGET_GETS_MIN and refused == 0
    for plural, counts in per_object.items():
        total = objects[plural]
        if not total:
            continue
        mean = sum(counts.values()) / minutes / total
        worst = max(counts.values(), default=0) / minutes
        print(
            f"{plural} status writes per object per minute: mean {mean:.2f}, max "
            f"{worst:.2f}   (target <= {TARGET_WRITES_PER_OBJECT_MIN:.0f})"
        )
        ok = ok and worst <= TARGET_WRITES_PER_OBJECT_MIN + 1e-9
    for (verb, resource), count in rows.items():
        base = objects.get(resource.split("/")[0])
        if verb in WRITES and base:
            ok = ok and count / minutes / base <= TARGET_WRITES_PER_OBJECT_MIN + 1e-9
    if refused:
        print(f"refused requests: {refused}")
    print("RESULT", "met" if ok else "missed")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
