"""Raw HTTP for hostile-input tests: requests as bytes on a socket, so a test can send what no
well-behaved client library would (bytes that are not UTF-8 in a header, a body that lies
about its length, headers a byte at a time)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import harness as h


def raw_request(url: str, data: bytes, timeout: float = 10.0) -> tuple[int | None, bytes]:
    """Send ``data`` to the server of ``url`` on a fresh connection and read until it closes;
    ``(status or None if no HTTP answer, whole answer)``."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not part:
                break
            out += part
    first = out.split(b"\r\n", 1)[0].split()
    status = int(first[1]) if len(first) >= 2 and first[0].startswith(b"HTTP/") else None
    return status, out


def request_bytes(
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    length: int | None = None,
) -> bytes:
    """An HTTP/1.1 request as bytes, ``Connection: close``; ``length`` overrides the
    Content-Length sent (a lie, if it differs from the body's)."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [k + b": " + v for k, v in headers or []]
    if body or length is not None:
        lines.append(b"Content-Length: " + str(len(body) if length is None else length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def log_problems(path: Path) -> list[str]:
    """Lines of a packdist log that say a bug happened (a traceback or an ERROR)."""
    text = path.read_text(errors="replace")
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or " ERROR " in line or "Error handling request" in line
    ]


def started_site(root: Path) -> tuple[h.Site, str]:
    """A running site with one server (dp1, nobody serving it); returns it and dp1's
    enrollment token."""
    site = h.make_site(root, tls=False)  # raw HTTP bytes on a socket: the layer under TLS
    token = site.add_server("dp1", "http://127.0.0.1:9")
    site.start()
    return site, token


def trickle(
    url: str, data: bytes, every: float, stop: Callable[[], bool], head: bytes = b""
) -> dict[str, Any]:
    """Send ``head`` at once, then ``data`` a byte every ``every`` seconds (a slowloris
    client), until the server drops the connection or ``stop()``;
    ``{"dropped_after": seconds or None, "sent": n}``."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    sent = 0
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(head)
        s.settimeout(every)
        for byte in data:
            if stop():
                break
            try:
                s.sendall(bytes([byte]))
                sent += 1
                if s.recv(1) == b"":  # the server closed it
                    return {"dropped_after": time.monotonic() - started, "sent": sent}
            except TimeoutError:
                continue  # nothing to read: still open
            except OSError:  # reset by the server
                return {"dropped_after": time.monotonic() - started, "sent": sent}
    return {"dropped_after": None, "sent": sent}
