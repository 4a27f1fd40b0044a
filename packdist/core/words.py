"""Counts in words: "1 instruction", "3 instructions", never "instruction(s)"."""

from __future__ import annotations


def counted(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the noun that goes with it (``many``: its plural, when not ``one`` + s)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"
