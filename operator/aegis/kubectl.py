"""`kubectl aegis <verb>` (also `aegis <verb>`): admin verbs over the Kubernetes API.

kubectl aegis backup <policy> [-n NS] [--no-wait]     on-demand backup, followed to the end
kubectl aegis restore ...                             see `kubectl aegis restore --help`
kubectl aegis failover status|approve|trigger|failback <plan>
kubectl aegis drill run|status <drill> [-n NS]       run a drill now (followed), or show its runs
kubectl aegis report [-n NS|-A] [--since 90d] [--format markdown|html]   DR evidence report
kubectl aegis verify <point|bp/POLICY> [-n NS]       authenticate stored backups now
kubectl aegis status [-n NS]                          every Aegis object and its condition
kubectl aegis keys export <policy> [-n NS]            recovery key bundle, for offline storage
kubectl aegis keys rewrap <policy> --kms-key ARN      add a KMS wrap to existing backups
kubectl aegis completion bash|zsh                     shell completion (source <(...))

backup, status, failover status and drill status take -o json|yaml to print the objects.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from importlib import import_module
from typing import Any

VERBS: dict[str, tuple[str, str]] = {
    "backup": ("aegis.kubectl", "backup_main"),
    "restore": ("aegis.kubectl_restore", "main"),
    "failover": ("aegis.kubectl_failover", "main"),
    "drill": ("aegis.kubectl_drill", "main"),
    "report": ("aegis.kubectl_report", "main"),
    "status": ("aegis.kubectl", "status_main"),
    "verify": ("aegis.kubectl_verify", "main"),
    "keys": ("aegis.kubectl_keys", "main"),
    "completion": ("aegis.kubectl_completion", "main"),
}
PARSERS: dict[str, tuple[str, str]] = {
    "backup": ("aegis.kubectl", "backup_parser"),
    "restore": ("aegis.kubectl_restore", "parser"),
    "failover": ("aegis.kubectl_failover", "parser"),
    "drill": ("aegis.kubectl_drill", "parser"),
    "report": ("aegis.kubectl_report", "parser"),
    "status": ("aegis.kubectl", "status_parser"),
    "verify": ("aegis.kubectl_verify", "parser"),
    "keys": ("aegis.kubectl_keys", "parser"),
    "completion": ("aegis.kubectl_completion", "parser"),
}
"""Each verb's argparse parser: shell completion is generated from them."""
OUTPUTS = ("json", "yaml")
FOLLOW_INTERVAL = 1.0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"kubectl aegis: unknown verb {verb!r}\n{__doc__}", file=sys.stderr)
        return 2
    module, function = VERBS[verb]
    entry: Callable[[list[str]], int] = getattr(import_module(module), function)
    return int(entry(rest))


def api_client() -> Any:
    """A client for the current kubeconfig context (KUBECONFIG honoured), or in-cluster."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    except config.ConfigException:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def default_namespace() -> str:
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
        namespace: str = context.get("context", {}).get("namespace") or "default"
        return namespace
    except (config.ConfigException, OSError, TypeError):
        return "default"


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=OUTPUTS, default=None,
        help="print the object(s) as json or yaml instead of the summary",
    )


def print_objects(objects: list[dict[str, Any]], output: str, single: bool = True) -> None:
    """`kubectl get -o json|yaml` style: one object, or a v1 List of them."""
    import json

    import yaml

    document: Any = (
        objects[0] if single and len(objects) == 1
        else {"apiVersion": "v1", "kind": "List", "items": objects}
    )
    if output == "json":
        print(json.dumps(document, indent=2, sort_keys=False))
    else:
        print(yaml.safe_dump(document, sort_keys=False), end="")


def backup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl aegis backup", description="Back up now.")
    parser.add_argument("policy", help="BackupPolicy name")
    parser.add_argument("-n", "--namespace", default=None)
    parser.add_argument("--no-wait", action="store_true", help="create the point and return")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to follow")
    add_output(parser)
    return parser


def backup_main(argv: list[str]) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from aegis import GROUP, VERSION
    from aegis.reconcilers.naming import on_demand_recovery_point_name, recovery_point_labels

    args = backup_parser().parse_args(argv)
    namespace = args.namespace or default_namespace()
    api = client.CustomObjectsApi(api_client())
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, "backuppolicies", args.policy)
    except ApiException as error:
        if error.status == 404:
            print(f"error: BackupPolicy {namespace}/{args.policy} not found", file=sys.stderr)
            return 1
        raise
    name = on_demand_recovery_point_name(args.policy, dt.datetime.now(dt.UTC))
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecoveryPoint",
        "metadata": {"name": name, "labels": recovery_point_labels(args.policy)},
        "spec": {"policyRef": {"name": args.policy}, "trigger": "Manual"},
    }
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "recoverypoints", body)
    except ApiException as error:
        if error.status != 409:
            raise
    # With -o the progress goes to stderr and stdout carries the object alone.
    progress = sys.stderr if args.output else sys.stdout
    print(f"recoverypoint.dr.aegis.dev/{name} created", file=progress)
    if not args.no_wait:
        code = follow_point(api, namespace, name, args.timeout, quiet=bool(args.output))
    else:
        code = 0
    if args.output:
        point = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "recoverypoints", name)
        print_objects([point], args.output)
    return code


def follow_point(api: Any, namespace: str, name: str, timeout: float, quiet: bool = False) -> int:
    from aegis import GROUP, VERSION
    from aegis.display import size as human_bytes

    deadline = time.monotonic() + timeout
    shown = ""
    progress = sys.stderr if quiet else sys.stdout
    while time.monotonic() < deadline:
        point = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "recoverypoints", name)
        status = point.get("status") or {}
        phase = status.get("phase") or "Pending"
        line = f"{phase}: {status.get('message') or ''}".rstrip(": ")
        if line != shown:
            print(line, flush=True, file=progress)
            shown = line
        if phase == "Completed" and quiet:
            return 0
        if phase == "Completed":
            print(f"  location  {status.get('location')}")
            print(
                f"  stored    {human_bytes(int(status.get('storedBytes') or 0))}"
                f"  (logical {human_bytes(int(status.get('sizeBytes') or 0))})"
            )
            print(f"  sha256    {status.get('sha256')}")
            print(f"  key id    {(status.get('encryption') or {}).get('keyId')}")
            print(f"  source    {status.get('sourceTime')}")
            return 0
        if phase in ("Failed", "Corrupted", "Expired"):
            return 1
        # Following a resource is polling its status; the interval is the display's refresh.
        time.sleep(FOLLOW_INTERVAL)
    print(f"error: {name} did not finish within {timeout:.0f}s", file=sys.stderr)
    return 1


def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl aegis status", description="Every Aegis object and its main condition."
    )
    parser.add_argument("-n", "--namespace", default=None)
    parser.add_argument("-A", "--all-namespaces", action="store_true")
    add_output(parser)
    return parser


def status_main(argv: list[str]) -> int:
    from kubernetes import client

    from aegis import GROUP, VERSION
    from aegis.api import KINDS

    args = status_parser().parse_args(argv)
    api = client.CustomObjectsApi(api_client())
    namespace = None if args.all_namespaces else (args.namespace or default_namespace())
    rows = []
    found: list[dict[str, Any]] = []
    for kind in KINDS:
        if namespace is None:
            items = api.list_cluster_custom_object(GROUP, VERSION, kind.plural)["items"]
        else:
            items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)[
                "items"
            ]
        for item in items:
            found.append(
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind.kind, **item}
            )
            conditions = (item.get("status") or {}).get("conditions") or []
            main_condition: dict[str, Any] = next(
                (c for c in conditions if c["type"] == kind.acceptance_condition), {}
            )
            rows.append(
                (
                    item["metadata"]["namespace"],
                    f"{kind.short_name}/{item['metadata']['name']}",
                    (item.get("status") or {}).get("phase")
                    or (item.get("status") or {}).get("state")
                    or "",
                    f"{main_condition.get('status', '?')} {main_condition.get('reason', '')}",
                    main_condition.get("message", "")[:80],
                )
            )
    if args.output:
        print_objects(found, args.output, single=False)
        return 0
    header = ("NAMESPACE", "OBJECT", "PHASE", "CONDITION", "MESSAGE")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(widths[i]) for i, v in enumerate(row[:4])) + "  " + row[4])
    return 0
