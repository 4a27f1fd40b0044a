"""Durations on the command line, in the units the configuration takes: ``30``, ``1.5``,
``90s``, ``5m``, ``24h``, ``7d`` (``--timeout``, ``--deadline``, ``--wave-timeout``, …)."""

from __future__ import annotations

from typing import Any

import click

from packdist.config_values import parse_duration


class Duration(click.ParamType[float, Any]):
    """Seconds, from a number or a number with a unit; at least ``minimum``."""

    name = "duration"

    def __init__(self, minimum: float = 0.0) -> None:
        self.minimum = minimum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                self.fail(f"{value!r}: {exc} (30, 90s, 5m, 24h, 7d)", param, ctx)
        if seconds < self.minimum:
            self.fail(f"{value!r}: must be at least {self.minimum:g}s", param, ctx)
        return seconds
