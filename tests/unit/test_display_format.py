"""The one formatter of sizes and durations shown in status.display and printer columns."""

from __future__ import annotations

import pytest

from aegis import display


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (72951, "71.2 KiB"),
        (1048575, "1.0 MiB"),  # not "1024.0 KiB"
        (5 * 1024**3 + 1, "5.0 GiB"),
        (3 * 1024**5, "3.0 PiB"),
        (None, None),
    ],
)
def test_sizes_read_in_binary_units(n: int | None, text: str | None) -> None:
    assert display.size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.264, "264ms"),
        (0, "0ms"),
        (0.9996, "1.0s"),
        (4.24, "4.2s"),
        (9.96, "10s"),
        (46.4, "46s"),
        (60, "1m"),
        (106, "1m46s"),
        (3599.6, "1h"),
        (7380, "2h3m"),
        (86400 * 3 + 3600 * 4 + 59, "3d4h"),
        (-2, "0ms"),
        (None, None),
        (float("nan"), None),
    ],
)
def test_durations_read_as_kubectl_writes_ages(seconds: float | None, text: str | None) -> None:
    assert display.duration(seconds) == text


def test_fields_drop_what_is_unknown() -> None:
    assert display.fields(size="1.0 KiB", rto=None) == {"size": "1.0 KiB"}
