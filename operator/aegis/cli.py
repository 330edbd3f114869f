"""`aegis <command>`: one entry point for the operator, the agent, the sandbox and admin verbs.

Each command lives in its own module and is imported only when used, so the agent (inside a
Job) never imports kopf or kubernetes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

# command → (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "operator": ("aegis.operator", "main", "run the operator (kopf)"),
    "agent": (
        "aegis.agent.cli",
        "main",
        "the data mover run inside Jobs: backup|restore|verify|catalog",
    ),
    "crds": ("aegis.api.cli", "main", "generate crds/ and charts/aegis/crds/ from the models"),
    "sandbox": ("aegis.sandbox.cli", "main", "a local no-cluster environment: up|demo|down"),
}
KUBECTL_VERBS = ("backup", "restore", "failover", "status", "verify")


def _usage() -> str:
    lines = ["usage: aegis <command> [args...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += [f"  {'|'.join(KUBECTL_VERBS)}   admin verbs, also as `kubectl aegis ...`"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in KUBECTL_VERBS:
        return kubectl_main(args)
    if command not in COMMANDS:
        print(f"aegis: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[command]
    if command == "sandbox" and (missing := _missing_sandbox_modules()):
        # The sandbox (emulator, moto, local servers) is a development tool: the runtime image
        # and a plain `pip install aegis-dr` leave it out.
        print(
            f"aegis sandbox: not available in this installation ({', '.join(missing)} missing)."
            "\nIt needs the sandbox extra: pip install 'aegis-dr[sandbox]' (the container image "
            "carries only the operator and the agent).",
            file=sys.stderr,
        )
        return 2
    entry: Callable[[list[str]], int] = getattr(import_module(module), function)
    return int(entry(rest))


SANDBOX_MODULES = ("aegis.sandbox", "kmock", "moto", "aiohttp")


def _missing_sandbox_modules() -> list[str]:
    from importlib.util import find_spec

    missing = []
    for name in SANDBOX_MODULES:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl aegis ...` (and `aegis backup|restore|failover|status ...`)."""
    from aegis.kubectl import main as kubectl

    return int(kubectl(list(sys.argv[1:] if argv is None else argv)))
