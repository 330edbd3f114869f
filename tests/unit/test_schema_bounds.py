"""Every integer a user can write has a maximum in the generated CRD schema: the API server
refuses what the operator could not act on (issue 11: `startingDeadlineSeconds:
4611686018427387904` overflowed at every tick while the policy stayed Ready=True)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

# Aegis's own kinds; kopf's ClusterKopfPeering (leader election) has no spec users write.
CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.dr.aegis.dev.yaml"))


def unbounded_integers(node: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("type") == "integer" and "maximum" not in node:
            found.append(path)
        for key, value in node.items():
            found += unbounded_integers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += unbounded_integers(value, f"{path}[{index}]")
    return found


@pytest.mark.parametrize("crd", CRDS, ids=lambda p: p.name.split(".")[0])
def test_every_integer_of_a_spec_has_a_maximum(crd: Path) -> None:
    document = yaml.safe_load(crd.read_text())
    for version in document["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert unbounded_integers(spec, "spec") == []
