"""The embedded store watched for commits (store/wakeup.py): real SQLite files, real
connections from other threads, inotify."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from packdist.service import Service
from packdist.store.sqlite import SQLiteStore
from packdist.store.wakeup import StoreWatcher, follow, watch

pytestmark = pytest.mark.timeout(60)

LOOSE = 5.0  # a bound no busy machine trips: what matters is waking before the deadline


def _store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "site.db")


def _add_server(store: SQLiteStore, name: str) -> None:
    Service(store).add_server(name, f"http://{name}:1", f"hash-{name}", [], None, time.time())


def _later(seconds: float, fn: object) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        fn()  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_commit_from_another_connection_wakes_the_watcher_and_is_seen_by_the_next_read(
    tmp_path: Path,
) -> None:
    reader, writer = _store(tmp_path), _store(tmp_path)
    watcher = watch(reader)
    assert watcher is not None
    try:
        thread = _later(0.2, lambda: _add_server(writer, "dp1"))
        started = time.monotonic()
        woke = watcher.wait(60)
        took = time.monotonic() - started
        thread.join()
        assert woke
        assert took < LOOSE
        assert reader.server_names() == ["dp1"]
    finally:
        watcher.close()
        reader.close()
        writer.close()


def test_a_commit_still_being_written_is_visible_once_the_watcher_wakes(tmp_path: Path) -> None:
    """A long transaction writes the log before it commits (its pages spill from a small
    cache): the watcher hears the writes at once, but answers only once the commit is
    made, so the read that follows sees it."""
    store = _store(tmp_path)
    watcher = StoreWatcher(store.path)
    writer = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA cache_size=1")  # spill to the log long before the commit
    writer.execute("CREATE TABLE filler (x TEXT)")
    assert watcher.wait(LOOSE)  # that commit is not the one under test
    spilled = threading.Event()

    def long_transaction() -> None:
        writer.execute("BEGIN IMMEDIATE")
        writer.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 2000)
        spilled.set()
        time.sleep(0.5)  # the log is written, the commit not yet made
        writer.execute("COMMIT")

    def rows() -> int:
        return int(store.db.rows_of("SELECT count(*) AS n FROM filler", {})[0]["n"])

    try:
        thread = threading.Thread(target=long_transaction)
        thread.start()
        assert spilled.wait(LOOSE)
        assert rows() == 0  # the writes are in the log, not yet committed
        assert watcher.wait(60)
        assert rows() == 2000
        thread.join()
    finally:
        watcher.close()
        writer.close()
        store.close()


def test_with_nothing_written_the_watcher_returns_at_its_deadline(tmp_path: Path) -> None:
    store = _store(tmp_path)
    watcher = StoreWatcher(store.path)
    try:
        started = time.monotonic()
        assert not watcher.wait(0.3)
        assert 0.25 <= time.monotonic() - started < LOOSE
    finally:
        watcher.close()
        store.close()


def test_reading_the_store_and_the_watchers_own_wait_wake_nobody(tmp_path: Path) -> None:
    """Reads and the wake-up's own wait for the writer's lock write nothing: an idle site
    is never woken by its own looking (which would make the watcher a busy loop)."""
    store, other = _store(tmp_path), _store(tmp_path)
    watcher = StoreWatcher(store.path)
    try:
        _add_server(other, "dp1")
        assert watcher.wait(LOOSE)  # woken once, and the lock taken and let go
        for _ in range(20):
            store.server_names()
            store.next_due_at()
            watcher.settle()
        assert not watcher.wait(0.3)
    finally:
        watcher.close()
        other.close()
        store.close()


def test_a_burst_of_commits_wakes_the_watcher_once(tmp_path: Path) -> None:
    store, other = _store(tmp_path), _store(tmp_path)
    watcher = StoreWatcher(store.path)
    try:
        for i in range(50):
            _add_server(other, f"dp{i}")
        assert watcher.wait(LOOSE)
        assert not watcher.wait(0.2)  # all fifty read by the one wake-up
        assert len(store.server_names()) == 50
    finally:
        watcher.close()
        other.close()
        store.close()


def test_following_the_store_calls_back_on_each_write_until_closed(tmp_path: Path) -> None:
    store, other = _store(tmp_path), _store(tmp_path)
    calls: list[float] = []
    woke = threading.Event()

    def called() -> None:
        calls.append(time.monotonic())
        woke.set()

    following = follow(store, called)
    assert following is not None
    try:
        time.sleep(0.1)
        assert calls == []  # nothing written: never called
        _add_server(other, "dp1")
        assert woke.wait(LOOSE)
    finally:
        following.close()
    following._thread.join(LOOSE)
    assert not following._thread.is_alive()
    woke.clear()
    _add_server(other, "dp2")
    assert not woke.wait(0.3)  # closed: no more calls
    other.close()
    store.close()


def test_a_store_that_cannot_be_watched_gives_no_watcher_and_no_error(tmp_path: Path) -> None:
    """Where inotify fails (here: the folder is gone; elsewhere: the user's limit of inotify
    instances reached), the callers look on a schedule instead of failing."""
    store = _store(tmp_path)
    store.close()
    store.path = tmp_path / "gone" / "site.db"
    assert watch(store) is None
    assert follow(store, lambda: None) is None
