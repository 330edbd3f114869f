"""The delivery files that can't run here (no Docker engine, no cluster) are held to what the
chart and the operator expect of them: the image's user, entry point and client tools, the
kind cluster's shape, the pinned helm."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VALUES = yaml.safe_load((ROOT / "charts" / "aegis" / "values.yaml").read_text())


def _arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"Dockerfile has no ARG {name}=..."
    return match.group(1).strip().strip('"')


def test_image_runs_as_the_chart_s_numeric_non_root_user() -> None:
    users = re.findall(r"^USER (.+)$", DOCKERFILE, re.MULTILINE)
    assert users == ["${UID}:${GID}"], users
    uid, gid = int(_arg_default("UID")), int(_arg_default("GID"))
    assert uid > 0 and gid > 0
    assert VALUES["podSecurityContext"]["runAsUser"] == uid
    assert VALUES["podSecurityContext"]["runAsGroup"] == gid


def test_image_runs_the_operator_by_default_and_the_agent_on_demand() -> None:
    assert re.search(r'^ENTRYPOINT \["aegis"\]$', DOCKERFILE, re.MULTILINE)
    assert re.search(r'^CMD \["operator"\]$', DOCKERFILE, re.MULTILINE)
    assert "ENV PATH=/opt/aegis/bin:$PATH" in DOCKERFILE
    # Multi-stage: a wheel is built, and only the venv reaches the runtime image.
    assert re.search(r"^FROM \S+ AS build$", DOCKERFILE, re.MULTILINE)
    assert "pip wheel --no-deps" in DOCKERFILE
    assert "COPY --from=build /opt/aegis /opt/aegis" in DOCKERFILE


def test_image_has_postgres_clients_13_to_17_and_redis_tools() -> None:
    assert _arg_default("PG_MAJORS").split() == ["13", "14", "15", "16", "17"]
    assert "postgresql-client-$major" in DOCKERFILE
    assert "apt.postgresql.org/pub/repos/apt bookworm-pgdg main" in DOCKERFILE
    assert "signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc" in DOCKERFILE
    for package in ("redis-tools", "redis-server"):
        assert re.search(rf"\b{package}\b", DOCKERFILE), package
    # The build proves each client is where the agent looks for it.
    assert "/usr/lib/postgresql/$major/bin/pg_dump --version" in DOCKERFILE


def test_docker_context_leaves_local_state_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!operator/"]


def test_kind_cluster_has_a_control_plane_and_a_worker() -> None:
    config: dict[str, Any] = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["kind"] == "Cluster"
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker"]


def test_helm_is_the_pinned_binary(helm: Callable[..., Any]) -> None:
    script = (ROOT / "scripts" / "fetch-helm.sh").read_text()
    pinned = dict(re.findall(r'^(HELM_SHA256|HELM_VERSION)="([^"]+)"$', script, re.MULTILINE))
    binary = ROOT / ".tools" / "bin" / "helm"
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == pinned["HELM_SHA256"]
    assert helm("version", "--short").stdout.startswith(pinned["HELM_VERSION"] + "+")


def test_the_image_leaves_the_sandbox_out_and_the_cli_says_how_to_get_it() -> None:
    assert "rm -rf /opt/aegis/lib/python3.11/site-packages/aegis/sandbox" in DOCKERFILE
    # Without its extra (here: kmock made unimportable), `aegis sandbox` names the extra
    # instead of failing with a traceback.
    import subprocess
    import sys

    code = ("import sys; sys.modules['kmock'] = None; sys.modules['moto'] = None\n"
            "from aegis.cli import main\n"
            "raise SystemExit(main(['sandbox', '--help']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "pip install 'aegis-dr[sandbox]'" in result.stderr
    assert "Traceback" not in result.stderr
