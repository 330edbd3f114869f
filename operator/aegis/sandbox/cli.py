"""`aegis sandbox up | down | status | demo`: the command line of the local environment.

The environment itself (start, stop, state) is :mod:`aegis.sandbox.environment`; the demo,
which drives that environment, is :mod:`aegis.sandbox.demo`. Both are imported from here and
never import this module, so the dependencies point one way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aegis.sandbox.environment import DEFAULT_DIR, SandboxError, down, status, up
from aegis.sandbox.servers import ServerStartError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis sandbox",
        description="A local Kubernetes API emulator, real PostgreSQL/Redis/S3 and the operator, "
        "on 127.0.0.1, with no cluster and no Docker.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="up|down|status|demo")
    for name, help_ in (
        ("up", "start the sandbox in the background"),
        ("down", "stop everything the sandbox started"),
        ("status", "show what runs and how to reach it"),
        ("demo", "up, then apply the examples and show what a user sees"),
    ):
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_DIR,
            help=f"the sandbox's state, kubeconfig and logs (default: {DEFAULT_DIR})",
        )
        if name == "demo":
            sub.add_argument(
                "--check",
                action="store_true",
                help="non-interactive: exit 1 if any step falls short, and stop the sandbox",
            )
            sub.add_argument(
                "--examples",
                type=Path,
                default=None,
                help="the examples/ directory (default: the one of this checkout)",
            )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            up(args.dir)
            return 0
        if args.command == "down":
            down(args.dir)
            return 0
        if args.command == "status":
            return status(args.dir)
        from aegis.sandbox.demo import run_demo

        return run_demo(args.dir, check=args.check, examples_dir=args.examples)
    except (SandboxError, ServerStartError) as error:
        print(f"aegis sandbox {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"aegis sandbox {args.command}: interrupted", file=sys.stderr)
        return 130
