"""The database under the store: one small interface, one implementation per driver.

The store above it speaks only in named queries (:mod:`packdist.store.queries`) and reads
rows by column name; what differs between SQLite and PostgreSQL (connections, transactions,
placeholders, migrations, notifications) is kept here and in the two drivers' modules.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from packdist.store import queries

Row = Mapping[str, Any]


class Database(abc.ABC):
    """Runs named queries. ``transaction()`` opens one (re-entrant: a use case that calls
    another stays in one transaction); a query outside a transaction runs on its own."""

    dialect: queries.Dialect
    concurrency = 1  # how many threads may use it at once (one SQLite connection: one)

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]: ...

    @abc.abstractmethod
    def _run(self, sql: str, params: Mapping[str, Any]) -> tuple[list[Row], int]:
        """Rows (as mappings by column name) and the count of rows changed."""

    @abc.abstractmethod
    def _run_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None: ...

    @abc.abstractmethod
    def notify(self, channel: str) -> None:
        """Tell other site workers there is something to look at (at commit); nothing where
        one process is the only worker."""

    def listen(self, channel: str, callback: Callable[[], None]) -> bool:
        """Call ``callback`` whenever another process notifies ``channel``; False where no
        other process can (SQLite: its one site process looks for work on its own)."""
        return False

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- named queries --------------------------------------------------------------------

    def sql(self, name: str, **fragments: str) -> str:
        text = queries.text(name, self.dialect.name)
        return text.format(**fragments) if fragments else text

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        return self.rows_of(self.sql(name), params)

    def row(self, name: str, /, **params: Any) -> Row | None:
        found = self.rows(name, **params)
        return found[0] if found else None

    def value(self, name: str, /, **params: Any) -> Any:
        found = self.row(name, **params)
        return None if found is None else next(iter(found.values()))

    def run(self, name: str, /, **params: Any) -> int:
        """Run a statement; how many rows it changed."""
        return self._run(*self.dialect.prepare(self.sql(name), params))[1]

    def run_many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            sql, _ = self.dialect.prepare(self.sql(name), rows[0])
            self._run_many(sql, rows)

    def rows_of(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        return self._run(*self.dialect.prepare(sql, params))[0]
