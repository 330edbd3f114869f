"""`kubectl aegis <verb>`: admin verbs over the Kubernetes API."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    verb = argv[0] if argv else ""
    print(f"kubectl aegis: {verb or 'a verb'} is not available in this version", file=sys.stderr)
    return 2
