"""The store on PostgreSQL, for several site workers: psycopg 3 with a connection pool.

Every worker of a site opens the same database. Claims lock the rows they take and skip
rows another worker has locked (``SKIP LOCKED``, in the ``claim_candidates`` query's
PostgreSQL variant), so two workers never take one instruction; ``NOTIFY packdist_work`` at commit wakes the others
(a new job, a server back, an instruction handed back). A connection lost while the
database restarts is replaced by the pool; the call that met it fails with
:class:`~packdist.errors.StoreError`, and the caller retries as it does for any store error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from packdist.errors import AlreadyExists, StoreError, UserError
from packdist.store import queries
from packdist.store.core import Store
from packdist.store.db import Database, Row
from packdist.store.sqlite import migrations, statements

log = logging.getLogger("packdist.store")

CHANNEL = "packdist_work"
MIGRATION_LOCK = 0x7061636B  # an advisory lock: one worker migrates, the others wait
POOL_SIZE = 8


def redacted(url: str) -> str:
    """The URL without its password, to show or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _driver() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover - a dependency of packdist
        raise UserError("PostgreSQL needs psycopg 3 and psycopg-pool installed") from exc
    return psycopg, psycopg_pool


class PostgresDatabase(Database):
    dialect = queries.POSTGRESQL

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        psycopg, psycopg_pool = _driver()
        from psycopg.rows import dict_row

        self.url = url
        self._psycopg = psycopg
        self.pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            check=psycopg_pool.ConnectionPool.check_connection,
            open=False,
            name="packdist",
        )
        try:
            self.pool.open(wait=True, timeout=15)
        except Exception as exc:
            self.pool.close()
            raise StoreError(f"cannot reach the database at {redacted(url)}: {exc}") from exc
        self.concurrency = pool_size
        self._local = threading.local()
        self._listeners: list[threading.Thread] = []
        self._closing = threading.Event()
        self._migrate()

    # --- connections and transactions --------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.errors.UniqueViolation as exc:  # two workers raced to add it
            raise AlreadyExists(f"already exists: {exc.diag.message_detail or exc}") from exc
        except self._psycopg.Error as exc:
            raise StoreError(f"database error: {str(exc).strip() or type(exc).__name__}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):  # no connection in time
                raise StoreError(f"database unavailable: {exc}") from exc
            raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:
            yield  # already inside one: the use case is one transaction
            return
        with self._errors(), self.pool.connection() as conn, conn.transaction():
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def _run(self, sql: str, params: Mapping[str, Any]) -> tuple[list[Row], int]:
        conn = getattr(self._local, "conn", None)
        with self._errors():
            if conn is not None:
                return self._execute(conn, sql, params)
            with self.pool.connection() as own:
                return self._execute(own, sql, params)

    @staticmethod
    def _execute(conn: Any, sql: str, params: Mapping[str, Any]) -> tuple[list[Row], int]:
        cursor = conn.execute(sql, params)
        rows = cursor.fetchall() if cursor.description is not None else []
        return rows, cursor.rowcount

    def _run_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        conn = getattr(self._local, "conn", None)
        with self._errors():
            if conn is not None:
                conn.cursor().executemany(sql, rows)
                return
            with self.pool.connection() as own:
                own.cursor().executemany(sql, rows)

    def _migrate(self) -> None:
        steps = migrations("sql/postgresql")
        with self.transaction():
            self.rows("migration_lock", key=MIGRATION_LOCK)
            self.run("create_schema_version")
            current = self.value("schema_version") or 0
            for version, sql in steps:
                if version > current:
                    for statement in statements(sql, "postgresql"):
                        self._run(statement.replace("%", "%%"), {})
                    self.run("record_schema_version", version=version)

    # --- notifications ------------------------------------------------------------------------

    def notify(self, channel: str) -> None:
        """Delivered when the current transaction commits (at once outside one)."""
        self.rows("notify", channel=f"{CHANNEL}_{channel}")

    def listen(self, channel: str, callback: Callable[[], None]) -> bool:
        """Call ``callback`` (from a thread of its own) on every notification of
        ``channel``, reconnecting after the database restarts, until :meth:`close`."""

        def run() -> None:
            while not self._closing.is_set():
                try:
                    with self._psycopg.connect(self.url, autocommit=True) as conn:
                        conn.execute(f'LISTEN "{CHANNEL}_{channel}"')
                        callback()  # anything sent while we were not listening
                        while not self._closing.is_set():
                            for _ in conn.notifies(timeout=1.0, stop_after=1):
                                callback()
                except self._psycopg.Error as exc:
                    log.info("listening for %s: %s; again in 1s", channel, exc)
                    self._closing.wait(1.0)
                except Exception:  # the callback failed (its loop closed): stop quietly
                    if not self._closing.is_set():
                        log.exception("listening for %s stopped", channel)
                    return

        thread = threading.Thread(target=run, name=f"listen-{channel}", daemon=True)
        thread.start()
        self._listeners.append(thread)
        return True

    def close(self) -> None:
        self._closing.set()
        for thread in self._listeners:
            thread.join(timeout=3)
        self.pool.close()


class PostgresStore(Store):
    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        super().__init__(PostgresDatabase(url, pool_size))
