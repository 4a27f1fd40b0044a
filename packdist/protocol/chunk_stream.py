"""Chunk streams read in a worker thread, not on the event loop.

The agent's fetch stage runs one thread per stream from the site: the thread reads each
frame straight from the socket into a buffer the stream reuses (``readinto``), then decodes,
verifies and writes it at once, so a chunk crosses no queue, no event-loop hop and no copy
beyond the kernel's. BLAKE3, ``pwrite`` and the socket reads release the GIL, so three
streams use both cores. Read on the event loop through aiohttp's parser and
``StreamReader``, the same GiB cost the agent 2.4 CPU-seconds (``docs/benchmarks.md``).

The client is the standard library's ``http.client``, one kept-alive connection per
thread, over TLS with the same context (and the same check of whom it reached, before a
byte of the request goes) as the agent's aiohttp sessions. Failures are the packdist
errors :mod:`packdist.http` gives, in the same words.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit

from packdist.core.digest import DIGEST_SIZE, Digest
from packdist.core.tls import holder as tls_holder
from packdist.errors import (
    ConnectError,
    PackdistError,
    RemoteError,
    RemoteTimeout,
    TransferError,
)
from packdist.http import (
    ERROR_MARK,
    HEADER_MARKS,
    HEADER_SIZE,
    HOLDER_HEADER,
    MAX_ERROR_BYTES,
    MAX_PAYLOAD,
    STREAM,
    Frame,
    Timeouts,
    WrongHolder,
    answer_error,
    holds,
    os_error,
    peer,
)

MAX_ERROR_BODY = 64 * 1024  # bytes of an error answer read, at most
IDLE_PER_ORIGIN = 8  # kept-alive connections kept per site worker or peer
#: seconds a kept-alive connection may sit idle and still be used: below the servers' own
#: idle timeout (``serving.py``), so a connection is not used just as they close it, and
#: short enough that one a NAT or firewall forgot costs no read timeout
IDLE_FOR = 15.0


class StreamStop:
    """Ends a stream that a thread is reading, from another thread (the event loop's, when
    the install is cancelled): the socket is shut down, so a blocked read returns at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.stopped = False

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.stopped:
                _shut(sock)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            _shut(self._sock)

    def check(self) -> None:
        if self.stopped:
            raise TransferError("the transfer was stopped")


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def receive_window(download_limit: float) -> int:
    """The socket receive buffer of a chunk stream under ``download_limit`` bytes/s (0: none,
    the kernel's own): a quarter second of the limit, at least 64 KiB."""
    return max(64 * 1024, int(download_limit / 4)) if download_limit > 0 else 0


class ChunkStreams:
    """Blocking chunk-stream requests over kept-alive connections, for worker threads.

    ``tls``: what ``https://`` URLs are dialled with (an ``http://`` URL goes in clear, as
    with :func:`packdist.http.new_session`). A kept-alive connection is reused only for
    the same origin and the same expected holder (it was checked for that one), and only
    while younger than :data:`IDLE_FOR` idle."""

    def __init__(
        self, tls: ssl.SSLContext, timeouts: Timeouts = STREAM, receive_buffer: int = 0
    ) -> None:
        self._tls = tls
        self._timeouts = timeouts
        #: bytes of each connection's socket receive buffer (0: the kernel's autotuning); a
        #: download limit sets it, so that the limit holds on the wire too: a reader held
        #: back by its limit closes its TCP window instead of letting the sender fill megabytes
        #: of kernel buffer at full speed
        self._receive_buffer = receive_buffer
        self._idle: dict[tuple[str, str], list[tuple[float, http.client.HTTPConnection]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def post(
        self,
        url: str,
        headers: dict[str, str],
        body: dict[str, Any],
        stop: StreamStop | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> Iterator[Frame]:
        """POST ``body`` (JSON) to ``url`` and yield the frames of the answer until it ends.

        A frame's payload is a view of the stream's buffer, valid until the next frame is
        asked for: the caller verifies and writes it, or copies it, before that. An error
        frame, an error answer or a broken stream raises a packdist error; ``stop`` ends
        the stream from another thread."""
        stop = stop or StreamStop()
        data = json.dumps(body).encode()
        send = {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}
        key = (peer(url), headers.get(HOLDER_HEADER, ""))
        conn, resp = self._answer(url, key, send, data, stop)
        done = False
        try:
            yield from read_frames(resp, url, max_payload)
            done = True
        except (OSError, http.client.HTTPException) as exc:
            stop.check()
            raise _translate(exc, url, sent=True) from exc
        finally:
            stop.attach(None)
            if done and not stop.stopped and not resp.will_close and conn.sock is not None:
                self._keep(key, conn)
            else:  # stopped early, broken, or closing: what is left makes it unusable
                conn.close()

    def close(self) -> None:
        """Close the idle connections, and any handed back from now on."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, {}, True
        for conns in idle.values():
            for _, conn in conns:
                conn.close()

    def _answer(
        self,
        url: str,
        key: tuple[str, str],
        headers: dict[str, str],
        data: bytes,
        stop: StreamStop,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """The request sent and its answer's head read: on a kept-alive connection when one
        is idle (tried again once on a fresh one if the other end had closed it)."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        reused = self._take(key)
        for conn in ([reused] if reused is not None else []) + [None]:
            fresh = conn is None
            if conn is None:
                conn = self._connect(url, headers, stop)
            else:
                stop.attach(conn.sock)
            try:
                stop.check()
                conn.request("POST", target, body=data, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                stop.check()
                if not fresh and _closed_by_peer(exc):
                    continue  # the other end closed an idle connection: dial again
                raise _translate(exc, url, sent=True) from exc
            except BaseException:  # stopped, or a header the client refuses: never pooled
                conn.close()
                raise
            if resp.status != 200:
                try:
                    _raise_for_answer(resp, url)
                finally:
                    conn.close()
            return conn, resp
        raise AssertionError("unreachable: the fresh connection either answers or raises")

    def _connect(
        self, url: str, headers: dict[str, str], stop: StreamStop
    ) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self._timeouts.connect, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeouts.connect)
        # never dialled again behind our back: only here is whom it reached checked
        conn.auto_open = 0
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _translate(exc, url, sent=False) from exc
        assert conn.sock is not None
        conn.sock.settimeout(self._timeouts.read)
        if self._receive_buffer:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
        stop.attach(conn.sock)
        expected = headers.get(HOLDER_HEADER)
        if expected and parts.scheme == "https":  # whom we reached, before the request goes
            assert isinstance(conn.sock, ssl.SSLSocket)
            held = tls_holder(conn.sock.getpeercert())
            if not holds(held, expected):
                conn.close()
                raise WrongHolder(
                    f"TLS: {host}:{port or 443} holds the certificate of"
                    f" {held or 'no packdist holder'}, not of {expected}: refusing it"
                )
        return conn

    def _take(self, key: tuple[str, str]) -> http.client.HTTPConnection | None:
        stale = []
        with self._lock:
            conns = self._idle.get(key, [])
            now = time.monotonic()
            while conns:
                since, conn = conns.pop()
                if now - since < IDLE_FOR:
                    break
                stale.append(conn)
            else:
                conn = None
        for old in stale:
            old.close()
        return conn

    def _keep(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault(key, [])
            if not self._closed and len(conns) < IDLE_PER_ORIGIN:
                conns.append((time.monotonic(), conn))
                return
        conn.close()


class ReadsInto(Protocol):
    """What frames are read from: an HTTP answer's body (or, in tests, any byte stream)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


def read_frames(resp: ReadsInto, url: str, max_payload: int = MAX_PAYLOAD) -> Iterator[Frame]:
    """The frames of a chunk stream until it ends (see :mod:`packdist.http`); an error frame
    raises RemoteError, a frame announcing more than ``max_payload`` bytes or cut short a
    TransferError. Each payload is a view of a buffer reused for the next frame."""
    head = bytearray(HEADER_SIZE)
    head_view = memoryview(head)
    buffer = memoryview(bytearray(0))
    while True:
        got = _read_full(resp, head_view)
        if got == 0:
            return
        if got < HEADER_SIZE:
            raise TransferError(f"stream from {url} cut mid-frame")
        encoding, size, length = HEADER_MARKS.unpack_from(head, DIGEST_SIZE)
        if length > max_payload:
            raise TransferError(f"stream from {url} announced a frame of {length} bytes")
        if len(buffer) < length:  # grown, never shrunk: the largest frame so far
            buffer = memoryview(bytearray(length))
        payload = buffer[:length]
        if _read_full(resp, payload) < length:
            raise TransferError(f"stream from {url} cut mid-chunk")
        if encoding == ERROR_MARK:
            raise RemoteError(bytes(payload[:MAX_ERROR_BYTES]).decode(errors="replace"))
        yield Frame(Digest(bytes(head[:DIGEST_SIZE])), encoding, size, payload)


def _read_full(resp: ReadsInto, into: memoryview) -> int:
    """Bytes read into ``into``: all of it, or fewer where the answer ended."""
    done = 0
    while done < len(into):
        n = resp.readinto(into[done:])
        if not n:
            break
        done += n
    return done


def _raise_for_answer(resp: http.client.HTTPResponse, url: str) -> None:
    """An error answer as the packdist error :func:`packdist.http.answer_error` says."""
    try:
        raw = resp.read(MAX_ERROR_BODY)
    except (OSError, http.client.HTTPException):  # the words then come from the status
        raw = b""
    raise answer_error(resp.status, raw, resp.getheader("Retry-After"), url)


def _closed_by_peer(exc: BaseException) -> bool:
    """Whether a kept-alive connection was found closed by the other end (idle, or a
    process that was killed and started again: over TLS that reads as an EOF of TLS)."""
    return isinstance(
        exc,
        http.client.RemoteDisconnected
        | BrokenPipeError
        | ConnectionResetError
        | ssl.SSLEOFError
        | ssl.SSLZeroReturnError,
    ) or (isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET))


def _translate(exc: BaseException, url: str, sent: bool) -> PackdistError:
    """A driver/OS error as a packdist error naming the cause and the peer (the words of
    :func:`packdist.http.translate`). ``sent``: the connection was up."""
    if isinstance(exc, PackdistError):
        return exc
    where = peer(url)
    if isinstance(exc, TimeoutError):
        if sent:
            return RemoteTimeout(f"read timeout from {where} (no answer)")
        return RemoteTimeout(f"connect timeout to {where}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason
        return ConnectError(f"TLS: {where} is not verified by the site's authority ({why})")
    if sent and isinstance(exc, http.client.HTTPException | ConnectionResetError | ssl.SSLError):
        return TransferError(f"connection to {where} dropped mid-transfer")
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS handshake with {where} failed ({exc.reason or exc})")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot connect to {where}: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        return os_error(exc, where)
    return TransferError(f"transfer with {where} failed: {exc!r}")
