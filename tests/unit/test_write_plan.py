"""The plan of an install alone (agent/write_plan.py): where each chunk goes, and the write
descriptors the writer threads share, closed only once no thread writes through them."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from packdist.agent import write_plan
from packdist.agent.write_plan import WritePlan, pread, pwrite_fd
from packdist.core.digest import Digest
from packdist.errors import TransferError
from tests.unit.test_agent_home import PIECE, package

ONES, TWOS = b"\1" * PIECE, b"\2" * PIECE
PKG = package("app", "1", {"a": ONES + TWOS + ONES, "dir/b": TWOS + b"end"})


def test_each_chunk_is_planned_at_every_place_it_appears_and_once_in_size() -> None:
    plan = WritePlan(PKG.manifest)
    assert plan.locations[Digest.of(ONES)] == [("a", 0), ("a", 2 * PIECE)]
    assert plan.locations[Digest.of(TWOS)] == [("a", PIECE), ("dir/b", 0)]
    assert plan.locations[Digest.of(b"end")] == [("dir/b", PIECE)]
    assert plan.sizes == {Digest.of(ONES): PIECE, Digest.of(TWOS): PIECE, Digest.of(b"end"): 3}


def test_a_descriptor_is_opened_once_per_file_whatever_the_writes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(bytes(3 * PIECE))
    plan = WritePlan(PKG.manifest)
    with plan.writing():
        fd = plan.fd(tmp_path / "a")
        assert plan.fd(tmp_path / "a") == fd
        for path, offset in plan.locations[Digest.of(ONES)]:
            pwrite_fd(plan.fd(tmp_path / path), offset, ONES)
    plan.close()
    assert (tmp_path / "a").read_bytes() == ONES + bytes(PIECE) + ONES
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


def test_closing_waits_for_a_writer_then_refuses_to_write_again(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(bytes(PIECE))
    plan = WritePlan(PKG.manifest)
    writing, release = threading.Event(), threading.Event()

    def writer() -> None:
        with plan.writing():
            fd = plan.fd(tmp_path / "a")
            writing.set()
            release.wait()
            pwrite_fd(fd, 0, ONES)  # the descriptor is still open: close waited

    t = threading.Thread(target=writer)
    t.start()
    writing.wait()
    closer = threading.Thread(target=plan.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close did not wait for the writer"
    release.set()
    t.join()
    closer.join()
    assert (tmp_path / "a").read_bytes() == ONES
    with pytest.raises(TransferError, match="install ended"), plan.writing():
        pass
    with pytest.raises(TransferError, match="install ended"):
        plan.fd(tmp_path / "a")


def test_a_writer_that_never_ends_leaves_the_descriptors_open_rather_than_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(write_plan, "CLOSE_WAIT", 0.1)
    (tmp_path / "a").write_bytes(bytes(PIECE))
    plan = WritePlan(PKG.manifest)
    release = threading.Event()
    opened: list[int] = []

    def stuck() -> None:
        with plan.writing():
            opened.append(plan.fd(tmp_path / "a"))
            release.wait()

    t = threading.Thread(target=stuck)
    t.start()
    while not opened:
        release.wait(0.01)
    with caplog.at_level(logging.WARNING, "packdist.agent"):
        plan.close()
    os.fstat(opened[0])  # still open: a thread may still write through it
    assert "descriptors left open" in caplog.text
    release.set()
    t.join()
    os.close(opened[0])


def test_pread_is_none_for_a_missing_file_or_a_short_read(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abcdef")
    assert pread(tmp_path / "f", 2, 3) == b"cde"
    assert pread(tmp_path / "f", 4, 3) is None, "short"
    assert pread(tmp_path / "missing", 0, 1) is None
