"""Named queries: every SQL statement of the store lives in ``queries.sql``, by name.

A query is written once, with ``:name`` parameters. Where the dialects differ, the file
holds a variant for one of them (``-- name: claim_candidates [postgresql]``), and a list
parameter (``x IN (:ids)``, a Python sequence) expands to one placeholder per item, or, past
``LONG_LIST`` items, to one parameter holding them all (a JSON array that SQLite's
``json_each`` reads, an array that PostgreSQL's ``unnest`` does): SQLite parses named
placeholders in time quadratic in their number (10,000 server names took 0.9 s), and
neither driver likes statements of that length. (Only lists of plain integers or of
strings go as arrays; others, such as digests as bytes, which JSON cannot carry, keep their
placeholders.) The store asks for a query by name and the
dialect turns it into what its driver takes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

_NAME = re.compile(r"^-- name: (\w+)(?: \[(\w+)\])?\s*$")
_PARAM = re.compile(r"(?<![:\w]):(\w+)")  # ``:name``, not a PostgreSQL ``::cast``
LONG_LIST = 32  # items of a list parameter past which it goes as one array


@cache
def _catalogue() -> dict[tuple[str, str | None], str]:
    text = (resources.files("packdist.store") / "queries.sql").read_text()
    found: dict[tuple[str, str | None], str] = {}
    key: tuple[str, str | None] | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), "-- name: _end"]:
        m = _NAME.match(line)
        if m is None:
            if not line.lstrip().startswith("--"):
                lines.append(line)
            continue
        if key is not None:
            if key in found:
                raise ValueError(f"query {key[0]} is defined twice")
            found[key] = "\n".join(lines).strip().rstrip(";")
        key, lines = (m.group(1), m.group(2)), []
    return found


def names() -> set[str]:
    return {name for name, _ in _catalogue()}


def text(name: str, dialect: str) -> str:
    """The query's text for ``dialect`` (its variant, else the common one)."""
    found = _catalogue()
    sql = found.get((name, dialect)) or found.get((name, None))
    if sql is None:
        raise KeyError(f"no query named {name}")
    return sql


@dataclass(frozen=True)
class Dialect:
    """How one driver spells parameters: ``named`` (``:x``, sqlite3) or ``pyformat``
    (``%(x)s``, psycopg)."""

    name: str
    paramstyle: str

    def prepare(self, sql: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Expand list parameters and spell the placeholders for the driver."""
        out = dict(params)
        for key, value in params.items():
            if isinstance(value, list | tuple):
                items: Sequence[Any] = value
                del out[key]
                if len(items) > LONG_LIST and _one_kind(items):
                    out[key] = self._array(items)
                    spelled = self._elements(key, items)
                else:
                    keys = [f"{key}__{i}" for i in range(len(items))]
                    out.update(zip(keys, items, strict=True))
                    spelled = ", ".join(f":{k}" for k in keys) if keys else "NULL"
                sql = re.sub(rf"(?<![:\w]):{key}\b", spelled, sql)
        if self.paramstyle == "pyformat":
            sql = sql.replace("%", "%%")
            sql = _PARAM.sub(lambda m: f"%({m.group(1)})s", sql)
        return sql, out

    def _array(self, items: Sequence[Any]) -> Any:
        return list(items) if self.paramstyle == "pyformat" else json.dumps(list(items))

    def _elements(self, key: str, items: Sequence[Any]) -> str:
        """A subquery of the items of array parameter ``key`` (inside ``IN (...)``)."""
        if self.paramstyle == "pyformat":  # the array's type, which PostgreSQL cannot guess
            kind = "text" if isinstance(items[0], str) else "bigint"
            return f"SELECT unnest(CAST(:{key} AS {kind}[]))"
        return f"SELECT value FROM json_each(:{key})"


def _one_kind(items: Sequence[Any]) -> bool:
    """All integers (not booleans) or all strings: what both array forms carry exactly."""
    if all(isinstance(v, str) for v in items):
        return True
    return all(isinstance(v, int) and not isinstance(v, bool) for v in items)


SQLITE = Dialect("sqlite", "named")
POSTGRESQL = Dialect("postgresql", "pyformat")
