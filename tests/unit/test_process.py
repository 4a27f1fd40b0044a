"""A long-running server's own process: its limits and what it logs when they bite."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource

import pytest

from packdist.process import AcceptErrors, raise_open_files_limit


def test_connections_refused_for_want_of_descriptors_are_one_line_not_a_traceback_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        handler = AcceptErrors()
        caplog.set_level(logging.INFO)
        for _ in range(500):  # what asyncio reports for each connection it cannot accept
            handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                },
            )
        lines = [r for r in caplog.records if r.name == "packdist.process"]
        assert len(lines) == 1
        assert "Too many open files" in lines[0].getMessage() and lines[0].exc_info is None
        caplog.clear()
        handler(loop, {"message": "something else", "exception": ValueError("x")})
        assert any("something else" in r.getMessage() for r in caplog.records)  # default
    finally:
        loop.close()


def test_the_open_files_limit_is_raised_as_far_as_the_process_may() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = raise_open_files_limit(soft + 1)
        assert got >= min(soft + 1, hard)
        assert raise_open_files_limit(1) >= got  # never lowered
    finally:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError):
            pass
