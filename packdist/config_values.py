"""The value parsers of the site's settings (``config.py``): text or a TOML value in, a
typed value out, or ValueError saying what is wanted; and how durations and rates are
shown back."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from packdist.core.names import check_host, check_label_key, split_listen
from packdist.core.rates import number_with_unit, parse_rate
from packdist.core.words import human_bytes
from packdist.errors import UserError


def listen_address(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string HOST:PORT")
    split_listen(v)
    return v


def integer(minimum: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("must be an integer")
        if isinstance(v, str):
            v = v.strip()
            if not re.fullmatch(r"[+-]?\d+", v):
                raise ValueError("must be an integer")
            v = int(v)
        if not isinstance(v, int):
            raise ValueError("must be an integer")
        if v < minimum:
            raise ValueError(f"must be at least {minimum}")
        return v

    return parse


def number(minimum: float, maximum: float = math.inf) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError("must be a number")
        try:
            f = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
        if not math.isfinite(f) or not minimum <= f <= maximum:
            bound = (
                f"between {minimum:g} and {maximum:g}" if maximum < math.inf else f">= {minimum:g}"
            )
            raise ValueError(f"must be a number {bound}")
        return f

    return parse


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(v: Any) -> float:
    """Seconds from ``30``, ``1.5``, ``"90s"``, ``"5m"``, ``"24h"``, ``"7d"``."""
    seconds = number_with_unit(v, _UNITS, "a duration such as 30s, 5m, 24h", True)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration of 0 or more")
    return seconds


def transfer_rate(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError("must be a rate such as 100mbit, 12MB or 0")
    try:
        return parse_rate(v)
    except UserError:
        raise ValueError("must be a rate such as 100mbit, 12MB or 0") from None


def label_key(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a label key such as site")
    try:
        return check_label_key(v)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def host_list(v: Any) -> str:
    """Host names and addresses, comma-separated (or a TOML list), each one a certificate
    can name; kept as one normalized comma-separated string."""
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("must be host names or addresses, comma-separated")
    try:
        return ",".join(dict.fromkeys(check_host(i) for i in items if i.strip()))
    except UserError as exc:
        raise ValueError(str(exc)) from None


def format_rate(rate: float) -> str:
    return f"{human_bytes(int(rate))}/s ({rate * 8 / 1e6:g} Mbit/s)"


def boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        word = v.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
    raise ValueError("must be true or false")


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
