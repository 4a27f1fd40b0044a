"""Woken by a commit to the embedded store (SQLite), without polling.

Every commit appends to the database's write-ahead log (``NAME-wal``), and a checkpoint
copies the log into the database file: inotify on their folder tells of both as they
happen, whichever process on this machine wrote. The site's despooler is woken so when the
command line writes a job (:func:`follow`), and ``job wait`` / ``distribute --wait`` when
the site records progress (:meth:`StoreWatcher.wait`). PostgreSQL has ``LISTEN``/``NOTIFY``
for the despooler instead (``store/postgres.py``).

The write is seen before its commit can be: SQLite appends the log, syncs it to disk, and
only then marks the commit done in the shared index, a memory map that inotify does not
see. So a wake-up first waits for the writer's lock (``BEGIN IMMEDIATE``, let go at once):
the writer holds it until its commit is visible, and a read that starts after sees it.

inotify hears only of writes made through this machine's kernel: a database on NFS written
from another machine says nothing. Every user therefore still looks after a long safety
interval (:data:`SAFETY`) with nothing heard; that is the only time-driven look left.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from packdist.store.core import Store

log = logging.getLogger("packdist.store")

#: with nothing heard, look anyway this often (seconds): inotify does not fire for writes
#: made on another machine (NFS), and a lost event must not keep work waiting for good
SAFETY = 1.0
#: the longest a wake-up waits for a writer's lock before looking anyway (a long
#: transaction: the commit that ends it writes the log again and wakes us once more)
SETTLE_MOST = 5.0
#: after each wake-up, the despooler's watcher lets this long pass before the next one: a
#: burst of the site's own commits (heartbeats of a large fleet, results) costs one look
FOLLOW_GAP = 0.02


class StoreWatcher:
    """Tells when the SQLite database at ``path`` is written, by any process here.

    Raises :class:`OSError` (or :class:`ImportError`) where inotify cannot be had (another
    kernel, the user's limit of inotify instances reached): callers then look on a schedule.
    """

    def __init__(self, path: Path) -> None:
        from inotify_simple import INotify, flags  # here: only the commands that wait load it

        path = path.resolve()  # SQLite keeps the log beside a symlink's target
        self.path = path
        self._names = {path.name, f"{path.name}-wal"}
        self._overflow = int(flags.Q_OVERFLOW | flags.IGNORED)
        self._settler: sqlite3.Connection | None = None
        self._closing = threading.Lock()  # stop() from one thread, close() from another
        self._closed = False
        self.stopped = False
        self._inotify = INotify()
        self._stop_r, self._stop_w = os.pipe()
        try:  # the folder, not the files: the log is made again after the last user closes
            mask = flags.MODIFY | flags.CREATE | flags.MOVED_TO
            self._inotify.add_watch(os.fspath(path.parent), mask)
        except OSError:
            self.close()
            raise
        self._poller = select.poll()
        self._poller.register(self._inotify.fileno(), select.POLLIN)
        self._poller.register(self._stop_r, select.POLLIN)

    def changed(self) -> bool:
        """Whether the database was written since the last call. Every event waiting is
        read at once: many commits give one answer (and one look)."""
        events = self._inotify.read(timeout=0)
        return any(e.name in self._names or e.mask & self._overflow for e in events)

    def wait(self, timeout: float | None) -> bool:
        """Block until the database is written, at most ``timeout`` seconds (None: until
        then or :meth:`stop`). True if it was; its commit is then visible to a read that
        starts now (see :meth:`settle`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stopped:  # commits that keep coming do not keep a stopped watcher going
            return False
        while not self.changed():
            if self.stopped:
                return False
            if deadline is None:
                self._poller.poll()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._poller.poll(math.ceil(left * 1000))
        # not past the caller's deadline: a commit missed so is told again by its own write
        self.settle(SETTLE_MOST if deadline is None else deadline - time.monotonic())
        return True

    def settle(self, most: float = SETTLE_MOST) -> None:
        """Wait until a writer under way has made its commit visible: take the write lock
        it holds until then, and let it go (a lock held past ``most`` seconds: go on)."""
        try:
            if self._settler is None:
                self._settler = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            self._settler.execute(f"PRAGMA busy_timeout = {max(10, int(most * 1000))}")
            self._settler.execute("BEGIN IMMEDIATE")
            self._settler.execute("ROLLBACK")
        except sqlite3.Error as exc:  # busy that long, or the file gone: the look says
            log.debug("waiting for a writer of %s: %s", self.path, exc)

    def stop(self) -> None:
        """Make :meth:`wait` return (from any thread)."""
        with self._closing:
            self.stopped = True
            if not self._closed:
                os.write(self._stop_w, b"x")

    def close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._inotify.close()
            os.close(self._stop_r)
            os.close(self._stop_w)
            if self._settler is not None:
                self._settler.close()


def watch(store: Store) -> StoreWatcher | None:
    """A watcher of the store's database file; None for PostgreSQL, or where inotify cannot
    be had (the caller looks on a schedule instead)."""
    from packdist.store.sqlite import SQLiteStore

    if not isinstance(store, SQLiteStore):
        return None
    try:
        return StoreWatcher(store.path)
    except (OSError, ImportError) as exc:
        log.info("cannot watch %s for changes (%s): looking on a schedule", store.path, exc)
        return None


class Following:
    """A thread that calls ``callback`` after each write to the database (see
    :func:`follow`); blocked in the kernel while nothing is written."""

    def __init__(
        self, watcher: StoreWatcher, callback: Callable[[], None], gap: float = FOLLOW_GAP
    ) -> None:
        self._watcher = watcher
        self._callback = callback
        self._gap = gap
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self._watcher.wait(None):
                self._callback()
                time.sleep(self._gap)  # what is written meanwhile waits: one look for all
        except Exception:  # the callback failed (its loop closed): stop quietly
            if not self._watcher.stopped:
                log.exception("watching %s for changes stopped", self._watcher.path)
        finally:
            self._watcher.close()

    def close(self) -> None:
        """Stop the thread (it closes the watcher on its way out); does not block."""
        self._watcher.stop()


def follow(store: Store, callback: Callable[[], None]) -> Following | None:
    """Call ``callback`` (from a thread of its own) whenever the store's SQLite database
    is written, by this process or another, at most once per ``FOLLOW_GAP``; None where
    the store cannot be watched."""
    watcher = watch(store)
    return None if watcher is None else Following(watcher, callback)


@contextlib.contextmanager
def woken(store: Store, listening: bool, callback: Callable[[], None]) -> Iterator[bool]:
    """Whether ``callback`` is called on other processes' commits within the block: already
    (``listening``: PostgreSQL's NOTIFY), or by following the store's SQLite file."""
    following = None if listening else follow(store, callback)
    try:
        yield listening or following is not None
    finally:
        if following is not None:
            following.close()
