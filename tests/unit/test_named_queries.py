"""Every named query of ``queries.sql`` is SQL its dialect accepts: each is prepared (with
``EXPLAIN``) on a fresh SQLite store, so a stray line (a merge's leftover, a typo) fails
here, not in production on the one path that runs it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from packdist.store import queries
from packdist.store.sqlite import SQLiteStore
from tests.unit.store_conformance import T0


def test_every_named_query_is_sql_that_sqlite_accepts(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "site.db")
    try:
        store.init_site("s", T0)
        refused = []
        for name in sorted(queries.names()):
            try:
                text = queries.text(name, "sqlite")
            except KeyError:  # a query of PostgreSQL only
                continue
            if "{" in text:  # filled in by its caller (the transition queries)
                text = re.sub(r"\{\w+\}", "", text)
            params = {p: None for p in re.findall(r"(?<![:\w]):(\w+)", text)}
            sql, values = store.db.dialect.prepare(text, params)
            try:
                store.db._db.execute(f"EXPLAIN {sql}", values)  # type: ignore[attr-defined]
            except sqlite3.Error as exc:
                refused.append(f"{name}: {exc}")
        assert refused == []
    finally:
        store.close()
