"""Fixtures that run the pinned helm binary (`scripts/fetch-helm.sh`) on charts/aegis.

Tests that need helm skip when it is missing locally; `.ci/run` fetches it, so in CI they run.
Only fixtures live here: test modules import nothing from this file (its module name,
`conftest`, is shared with other test directories).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "aegis"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE = "aegis"
RELEASE_NAMESPACE = "aegis-system"

Manifest = dict[str, Any]
Helm = Callable[..., "subprocess.CompletedProcess[str]"]
Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="session")
def helm() -> Helm:
    """`helm(*args)` runs the pinned helm and returns the finished process (never raises)."""
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.skip(f"{HELM} is missing: run scripts/fetch-helm.sh (CI does)")

    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HELM), *args], capture_output=True, text=True, timeout=120, check=False
        )

    return _run


@pytest.fixture(scope="session")
def template_args() -> Callable[..., list[str]]:
    """The `helm template` command line for one values file and extra flags."""

    def _args(values: Path | None = None, *extra: str) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *extra]
        return [*args, "--values", str(values)] if values is not None else args

    return _args


@pytest.fixture(scope="session")
def render(helm: Helm, template_args: Callable[..., list[str]]) -> Render:
    """`render(values_file, *extra_flags)` → the rendered documents, cached per arguments."""
    cache: dict[tuple[str, ...], list[Manifest]] = {}

    def _render(values: Path | None = None, *extra: str) -> list[Manifest]:
        args = template_args(values, *extra)
        key = tuple(args)
        if key not in cache:
            result = helm(*args)
            assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
            cache[key] = [d for d in yaml.safe_load_all(result.stdout) if d]
        return cache[key]

    return _render
