"""Leader election at startup, against the emulator: without kopf's peering CRD a replica
exits with the fix instead of waiting paused forever (pods that look Ready and do nothing).
The election itself is proven end to end in tests/e2e/test_operator_ha.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis.sandbox.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def emulator_without_peering_crd(tmp_path: Path) -> Iterator[Path]:
    crds = tmp_path / "crds"
    crds.mkdir()
    for path in (ROOT / "crds").glob("*.dr.aegis.dev.yaml"):
        shutil.copy(path, crds)
    server = ApiServer(crd_dir=crds).start()
    try:
        server.write_kubeconfig(tmp_path / "kubeconfig")
        yield tmp_path / "kubeconfig"
    finally:
        server.stop()


def test_missing_peering_crd_stops_the_replica_with_the_fix(
    emulator_without_peering_crd: Path,
) -> None:
    env = {**os.environ, "KUBECONFIG": str(emulator_without_peering_crd),
           "AEGIS_PEERING": "aegis", "AEGIS_METRICS_PORT": "0", "AEGIS_HEALTH_PORT": "0",
           "AEGIS_LOG_FORMAT": "text"}
    result = subprocess.run([sys.executable, "-m", "aegis", "operator"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "failed permanently: leader election needs the CRD clusterkopfpeerings.kopf.dev" in out
    assert "apply crds/clusterkopfpeerings.kopf.dev.yaml" in out
