"""A minimal HTTP/1.1 client on ``asyncio.Protocol`` for the simulated agents of
``bench scale``: a request costs a future and a few byte operations, so that ten thousand
agents heartbeating cost their process little next to the site they load. One request at a
time per connection; an answer is read by its Content-Length (or to the end of the
connection)."""

from __future__ import annotations

import asyncio


class Connection(asyncio.Protocol):
    """An HTTP/1.1 client connection: one request at a time, answers read by Content-Length
    (or to the end of the connection)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[tuple[int, bytes]] | None = None
        self.retry_after: float | None = None  # of the last answer, if it had one
        self.closed = False
        self.buf = b""
        self.length = -1
        self.head = 0

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self.done is None
        self.done = asyncio.get_running_loop().create_future()
        self.retry_after = None
        self.buf, self.length, self.head = b"", -1, 0
        self.transport.write(request)
        return self.done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but act as one
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.length < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = end + 4
            headers = self.buf[:end].lower()
            self.retry_after = _retry_after(headers)
            at = headers.find(b"\r\ncontent-length:")
            if at < 0:
                return  # read to the end of the connection
            stop = headers.find(b"\r\n", at + 2)
            self.length = int(headers[at + 17 : stop if stop > 0 else len(headers)])
        if len(self.buf) - self.head >= self.length and self.done is not None:
            answer = (int(self.buf[9:12]), self.buf[self.head : self.head + self.length])
            done, self.done = self.done, None
            if not done.done():
                done.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        done, self.done = self.done, None
        if done is None or done.done():
            return
        if self.head and self.length < 0:
            done.set_result((int(self.buf[9:12]), self.buf[self.head :]))
        else:
            done.set_exception(ConnectionResetError("connection closed before the answer"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def post(
    site: tuple[str, int], request: bytes, timeout: float, kept: Connection | None = None
) -> tuple[tuple[int, bytes], Connection | None, float | None]:
    """Send one request, on ``kept`` if it is still open, else on a new connection; the
    answer, the connection to use next time (None: closed) and the answer's Retry-After."""
    loop = asyncio.get_running_loop()
    conn = kept if kept is not None and not kept.closed else None
    try:
        async with asyncio.timeout(timeout):
            if conn is None:
                _, conn = await loop.create_connection(Connection, *site)
            answer = await conn.send(request)
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    if b"\r\nConnection: close\r\n" in request[:1024]:
        conn.close()
        return answer, None, conn.retry_after
    return answer, conn, conn.retry_after


def _retry_after(headers: bytes) -> float | None:
    at = headers.find(b"\r\nretry-after:")
    if at < 0:
        return None
    stop = headers.find(b"\r\n", at + 2)
    try:
        return float(headers[at + 14 : stop if stop > 0 else len(headers)])
    except ValueError:
        return None


def request_bytes(host_port: str, path: str, token: str, body: bytes, close: bool) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode() + body
