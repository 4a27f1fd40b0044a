"""Persistence behind one store: SQLite (the embedded default) or PostgreSQL (several site
workers). Both run the same named queries (``queries.sql``) and pass one conformance suite."""

from __future__ import annotations

from pathlib import Path

from packdist.store.core import Store


def is_store_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def open_store(target: Path | str) -> Store:
    """A store on a SQLite file, or on a ``postgresql://`` URL."""
    if isinstance(target, str) and is_store_url(target):
        from packdist.store.postgres import PostgresStore

        return PostgresStore(target)
    from packdist.store.sqlite import SQLiteStore

    return SQLiteStore(Path(target))


__all__ = ["Store", "is_store_url", "open_store"]
