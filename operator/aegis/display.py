"""Numbers as people write them, for status fields meant for display (`status.display`) and
the printer columns that show them: `71.2 KiB`, `1m46s`, `264ms`.

One formatter for every kind, so `kubectl get` reads the same everywhere; the numeric status
fields (`storedBytes`, `durationSeconds`, `rtoSeconds`, ...) stay, and stay authoritative.
"""

from __future__ import annotations

import math

SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size(n: int | float | None) -> str | None:
    """Bytes in binary units: `0 B`, `512 B`, `71.2 KiB`, `1.0 GiB`; None stays None."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return None
    value = float(n)
    if abs(value) < 1024:
        return f"{int(value)} B"
    for unit in SIZE_UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == SIZE_UNITS[-1]:
            # 1023.96 KiB would print as "1024.0 KiB": go one unit up instead.
            if round(abs(value), 1) >= 1024 and unit != SIZE_UNITS[-1]:
                continue
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def duration(seconds: int | float | None) -> str | None:
    """A duration as kubectl writes ages, with sub-second precision where it matters:
    `264ms`, `4.2s`, `46s`, `1m46s`, `2h3m`, `3d4h`; None stays None."""
    if seconds is None or not math.isfinite(float(seconds)):
        return None
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{round(s * 1000)}ms" if round(s * 1000) < 1000 else "1.0s"
    if s < 10:
        return f"{s:.1f}s" if round(s, 1) < 10 else "10s"
    whole = round(s)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if whole < 86400:
        hours, rest = divmod(whole, 3600)
        minutes = rest // 60
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, rest = divmod(whole, 86400)
    hours = rest // 3600
    return f"{days}d{hours}h" if hours else f"{days}d"


def fields(**values: str | None) -> dict[str, str]:
    """A `display` object in wire form: camelCase keys given by the caller, None dropped."""
    return {key: value for key, value in values.items() if value is not None}
