"""Times as operators read them: ISO 8601 in UTC for records, "12s ago" for glances."""

from __future__ import annotations

import datetime as dt
import math
from functools import lru_cache


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _iso_second(math.floor(ts))  # to the second: what the stamp shows of ``ts``


@lru_cache(maxsize=65_536)  # a job's 10,000 rows share their seconds: each is formatted once
def _iso_second(second: int) -> str:
    return (
        dt.datetime.fromtimestamp(second, dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    d = now - ts
    if d < 0:
        return f"in {-d:.0f}s"
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    return f"{d / 3600:.1f}h ago"
