"""Rates and sizes as operators write them: ``100mbit``, ``12.5MB``, ``2MiB/s``; ``500MiB``.

Kept apart from :mod:`packdist.ratelimit` (which needs asyncio) so that the command line,
which parses rates in its options, starts without importing asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from packdist.errors import UserError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_BITS = {"kbit": 1000 / 8, "mbit": 1000**2 / 8, "gbit": 1000**3 / 8}
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*?)(?:/s|ps)?\s*$")


def parse_rate(text: str | int | float) -> float:
    """Bytes per second from ``"12.5MB"``, ``"100mbit"``, ``"2MiB/s"`` or a plain number
    of bytes per second; 0 means unlimited."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _RATE.match(str(text))
        unit = m.group(2).lower() if m else ""
        if m is None or (unit not in _UNITS and unit not in _BITS):
            raise UserError(
                f"bad rate {text!r}: say e.g. 100mbit, 12.5MB, 2MiB (per second) or 0 for no limit"
            )
        value = float(m.group(1)) * (_BITS[unit] if unit in _BITS else _UNITS[unit])
    if value < 0:
        raise UserError(f"bad rate {text!r}: must not be negative")
    return value


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def number_with_unit(
    v: Any, units: Mapping[str, float], what: str, floats: bool, tail: str = ""
) -> float:
    """``v`` as a number times its one-letter unit (a key of ``units``; ``""``: none), from
    an int (or a float, with ``floats``) or a string such as ``"90s"``; ValueError saying
    "must be ``what``" otherwise. ``tail``: a pattern allowed after the unit."""
    if isinstance(v, bool):
        raise ValueError(f"must be {what}")
    if isinstance(v, int) or (floats and isinstance(v, float)):
        return float(v)
    if isinstance(v, str):
        letters = "".join(k for k in units if k)
        m = re.fullmatch(rf"\s*(\d+(?:\.\d+)?)\s*([{letters}]?){tail}\s*", v.lower())
        if m:
            return float(m.group(1)) * units[m.group(2)]
    raise ValueError(f"must be {what}")


def parse_size(v: Any) -> int:
    """Bytes from ``1000``, ``"500MiB"``, ``"10G"``, ``"2GiB"`` (units are binary: K, M, G,
    T, optionally followed by ``iB`` or ``B``)."""
    n = number_with_unit(v, _SIZE_UNITS, "a size such as 500MiB or 2GiB", False, "(?:i?b)?")
    if n < 0:
        raise ValueError("must be a size of 0 or more")
    return int(n)
