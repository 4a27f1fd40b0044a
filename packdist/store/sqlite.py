"""The embedded store: SQLite in WAL mode, schema migrations from version 1."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from packdist.errors import StoreError
from packdist.store import queries
from packdist.store.core import Store
from packdist.store.db import Database, Row


def migrations(folder: str = "sql") -> list[tuple[int, str]]:
    """The numbered ``NNNN_*.sql`` files of one folder, in order."""
    root = resources.files("packdist.store") / folder
    found = [
        (int(item.name.split("_", 1)[0]), item.read_text())
        for item in root.iterdir()
        if item.name.endswith(".sql")
    ]
    return sorted(found)


def statements(sql: str, dialect: str = "sqlite") -> list[str]:
    """The statements of a migration, split at a ``;`` that ends a line, but not within a
    trigger's ``BEGIN … END`` (SQLite) or a ``$$``-quoted function body (PostgreSQL)."""
    found: list[str] = []
    pending = ""
    for piece in sql.split(";\n"):
        pending = f"{pending};\n{piece}" if pending else piece
        if dialect == "sqlite":
            whole = sqlite3.complete_statement(pending + ";")
        else:
            whole = pending.count("$$") % 2 == 0
        if whole:
            if pending.strip():
                found.append(pending)
            pending = ""
    if pending.strip():
        found.append(pending)
    return found


class SQLiteDatabase(Database):
    dialect = queries.SQLITE

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        self._lock = threading.RLock()  # one connection: one transaction at a time
        self._depth = 0
        self._migrate()

    def _migrate(self) -> None:
        steps = migrations()
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= steps[-1][0]:
            return  # up to date: no write lock for read-only users
        with self.transaction():
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            for version, sql in steps:
                if version > current:
                    for statement in statements(sql):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={version}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"database busy or unavailable: {exc}") from exc
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _run(self, sql: str, params: Mapping[str, Any]) -> tuple[list[Row], int]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                found = cursor.fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc
            if cursor.description is None:
                return [], cursor.rowcount
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r, strict=True)) for r in found], cursor.rowcount

    def _run_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            try:
                self._db.executemany(sql, rows)
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    def notify(self, channel: str) -> None:
        """One site process per SQLite database: its despooler looks for work on its own."""

    def close(self) -> None:
        self._db.close()


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(SQLiteDatabase(path))
