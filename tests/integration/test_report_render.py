"""The HTML report rendered by a real browser: Debian's headless Chromium, offline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.unit.test_report import report

from aegis.kubectl_report import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_chromium_renders_the_report_with_its_charts_and_tables(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(report()))
    assert CHROMIUM is not None
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<svg") == 3 and dom.count("<table") == 4, dom[:2000]
    assert "Drill weekly: measured RTO per run" in dom
    assert "Failover drill orders-failover: RTO per run" in dom
    assert "42.0s (predicted)" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=900,1400", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
