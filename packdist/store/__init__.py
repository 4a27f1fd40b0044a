"""Persistence behind one interface: SQLite (embedded default), PostgreSQL later."""

from __future__ import annotations

from pathlib import Path

from packdist.store.base import Store


def open_store(path: Path) -> Store:
    from packdist.store.sqlite import SQLiteStore

    return SQLiteStore(path)


__all__ = ["Store", "open_store"]
