"""`kubectl aegis verify <point | rp/NAME | bp/POLICY>`: authenticate stored backups now.

A request is the `dr.aegis.dev/verify` annotation on a RecoveryPoint (a new value asks
again); the operator runs a verify Job that downloads, hashes and authenticates every chunk
and records the verdict in the point's status.verification (Verified=True, or Corrupted).
For a policy, its newest Completed points are verified (spec.verification.newest, default 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from typing import Any

POINT_PREFIXES = ("rp/", "recoverypoint/", "recoverypoints/")
POLICY_PREFIXES = ("bp/", "backuppolicy/", "backuppolicies/")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl aegis verify", description=__doc__)
    p.add_argument("target", help="a RecoveryPoint (NAME or rp/NAME) or bp/POLICY")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("--no-wait", action="store_true", help="request and return")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to follow")
    return p


def main(argv: list[str]) -> int:
    from kubernetes import client

    from aegis import GROUP, VERSION
    from aegis.kubectl import FOLLOW_INTERVAL, api_client, default_namespace
    from aegis.reconcilers.verification import VERIFY_ANNOTATION, newest_completed

    args = parser().parse_args(argv)
    namespace = args.namespace or default_namespace()
    api = client.CustomObjectsApi(api_client())
    target: str = args.target
    if target.startswith(POLICY_PREFIXES):
        policy = target.split("/", 1)[1]
        body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "backuppolicies", policy)
        newest = int(((body.get("spec") or {}).get("verification") or {}).get("newest") or 1)
        items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "recoverypoints")
        of_policy = [
            p
            for p in items.get("items", [])
            if ((p.get("spec") or {}).get("policyRef") or {}).get("name") == policy
        ]
        names = [p["metadata"]["name"] for p in newest_completed(of_policy, newest)]
        if not names:
            print(f"error: BackupPolicy {policy} has no Completed RecoveryPoint", file=sys.stderr)
            return 1
    else:
        for prefix in POINT_PREFIXES:
            target = target.removeprefix(prefix)
        names = [target]
    token = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    for name in names:
        api.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "recoverypoints",
            name,
            {"metadata": {"annotations": {VERIFY_ANNOTATION: token}}},
        )
        print(f"recoverypoint.dr.aegis.dev/{name} verification requested")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    pending = set(names)
    failed = False
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            verdict = _verdict(api, namespace, name, f"request-{token}")
            if verdict is None:
                continue
            pending.discard(name)
            result, message = verdict
            failed = failed or result != "Passed"
            print(f"{name}: {result}: {message}")
        if pending:
            # Following a resource is polling its status; the interval is the display's.
            time.sleep(FOLLOW_INTERVAL)
    for name in sorted(pending):
        print(f"error: {name} was not verified within {args.timeout:.0f}s", file=sys.stderr)
    return 1 if failed or pending else 0


def _verdict(api: Any, namespace: str, name: str, request: str) -> tuple[str, str] | None:
    from aegis import GROUP, VERSION

    point = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "recoverypoints", name)
    status = point.get("status") or {}
    verification = status.get("verification") or {}
    if verification.get("request") == request:
        return str(verification.get("result")), str(verification.get("message") or "")
    if status.get("phase") not in (None, "Completed", "Pending", "Running"):
        return str(status["phase"]), str(status.get("message") or "")
    return None
