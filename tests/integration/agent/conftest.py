"""Fixtures for agent integration tests: a key directory and cuttable TCP proxies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.agent.helpers import CuttableProxy


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "2025-01").write_text(os.urandom(32).hex() + "\n")
    return directory


@pytest.fixture
def proxy_factory() -> Iterator[Any]:
    made: list[CuttableProxy] = []

    def make(endpoint: str, cut_after: int | None = None) -> CuttableProxy:
        host, port = endpoint.removeprefix("http://").split(":")
        proxy = CuttableProxy((host, int(port)), cut_after)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
