"""What a long-running packdist server sets up in its own process, for thousands of peers.

* :func:`settle_collector`: Python's cyclic garbage collector, tuned for a heap of many
  connections.
* :func:`raise_open_files_limit`: every kept-alive agent holds a file descriptor.
* :func:`quiet_accept_errors`: when the descriptors run out anyway, one line now and then,
  not a traceback per refused connection.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import socket
import time
from typing import Any

from packdist.core.names import check_listen
from packdist.errors import UserError

log = logging.getLogger("packdist.process")

#: the collector's thresholds for a long-running server: a young generation of 50,000
#: objects rather than 700 (see :func:`settle_collector`)
COLLECTOR_THRESHOLDS = (50_000, 20, 20)
#: descriptors a server asks for (the hard limit caps it; root may raise that too)
WANTED_OPEN_FILES = 1 << 20
#: seconds between two lines about refused connections
ACCEPT_REPORT_EVERY = 10.0
_OUT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def settle_collector() -> None:
    """Tune Python's cyclic garbage collector for a server holding thousands of connections.

    Measured on a site with 10,000 agents on kept-alive connections: with the default
    thresholds (700, 10, 10) a full collection walked every object of every connection once
    every few seconds, 0.4-0.6 s each, which took a quarter of the CPU during a job and
    stalled the event loop long enough to shed heartbeats. Objects the server keeps from its
    start are frozen out of collections; the young generation is larger, so full
    collections come seldom. Reference counting still frees what it always freed: this
    only spaces out the search for cycles.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def raise_open_files_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise this process's limit of open files towards ``wanted`` (the soft limit up to
    the hard one; the hard one too where the process may, as root); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted <= soft:
        return soft  # never lowered
    try:
        if hard != resource.RLIM_INFINITY and wanted > hard:
            try:  # the hard limit too: only root may, up to the kernel's nr_open
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
                return wanted
            except (ValueError, OSError):
                pass
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class AcceptErrors:
    """An event loop exception handler: a connection refused for want of descriptors (or
    memory) is counted and reported in one line every ``ACCEPT_REPORT_EVERY`` seconds;
    anything else goes to the loop's default handler."""

    def __init__(self) -> None:
        self.refused = 0
        self._told_at = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _OUT_OF
            and "accept" in str(context.get("message", ""))
        ):
            self.refused += 1
            now = time.monotonic()
            if now - self._told_at >= ACCEPT_REPORT_EVERY:
                limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                log.warning(
                    "refusing new connections for a moment: %s (open files limit %s);"
                    " %d time(s) since the last report; raise the limit (ulimit -n,"
                    " LimitNOFILE=) or spread the servers over more workers",
                    exc.strerror,
                    limit,
                    self.refused,
                )
                self._told_at, self.refused = now, 0
            return
        loop.default_exception_handler(context)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> AcceptErrors:
    handler = AcceptErrors()
    loop.set_exception_handler(handler)
    return handler


def check_bindable(listen: str) -> None:
    """UserError, one line, when ``listen`` cannot be bound (a port in use, an address not
    of this machine): said before the server says it listens, and before it starts its
    work. Bound with SO_REUSEADDR, as the server binds, then let go at once."""
    host, port = check_listen(listen)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {listen}: {exc.strerror}") from None
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                words = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise UserError(f"cannot listen on {listen}: {words}") from None
