"""`aegis crds [--root DIR] [--check]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aegis.api import crdgen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aegis crds", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    args = parser.parse_args(argv)
    if args.check:
        directories = [args.root / "crds", args.root / "charts" / "aegis" / "crds"]
        stale = [
            f"{directory / name}"
            for directory in directories
            for name, text in crdgen.rendered().items()
            if not (directory / name).exists() or (directory / name).read_text() != text
        ]
        for stale_path in stale:
            print(f"stale: {stale_path} (run `aegis crds`)", file=sys.stderr)
        return 1 if stale else 0
    for path in crdgen.write(args.root):
        print(path)
    return 0
