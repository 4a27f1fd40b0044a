"""An unauthenticated flood against a site, run as its own process (its CPU is not the test's):
``python -m tests.integration.flood URL SECONDS CLIENTS``. Each client loops, for at most
SECONDS, over the cheapest ways an outsider once made the site work hard: wrong bearers
shaped like the operator password (one scrypt each, before) and like an enrollment token,
login forms with a wrong password, and login bodies announcing 64 MiB. It prints one JSON
line: how many answers of each status it got, and how many connections failed."""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import sys
import time

LOGIN_HEAD = (
    "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    "Content-Length: {length}\r\n\r\n"
)


def _wrong_password() -> str:
    """Shaped like the credential of the operator ``admin``: what costs the site a check."""
    return "pdo_admin_" + secrets.token_urlsafe(18)


def _request(kind: int) -> bytes:
    if kind == 0:
        return (
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_wrong_password()}\r\n\r\n"
        ).encode()
    if kind == 1:
        token = "pdt_" + secrets.token_urlsafe(32)
        body = b'{"digests": []}'
        return (
            f"POST /v1/chunks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    if kind == 2:
        body = f"password={_wrong_password()}&next=/".encode()
        return LOGIN_HEAD.format(length=len(body)).encode() + body
    # says 64 MiB and sends 256 KiB of it: before, the site read all of it before looking
    return LOGIN_HEAD.format(length=64 << 20).encode() + b"p" * (256 * 1024)


async def client(
    host: str, port: int, kind: int, until: float, counts: collections.Counter[str]
) -> None:
    """One client sending requests of one kind, each on a new connection, as fast as the
    site answers (waiting at most a second: an attacker does not wait for answers)."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_request(kind))
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 1.0)
                parts = line.split()
                counts[parts[1].decode() if len(parts) > 1 else "no answer"] += 1
            finally:
                writer.close()
        except TimeoutError:
            counts["no answer within 1s"] += 1
        except OSError:
            counts["connection failed"] += 1


async def main(url: str, seconds: float, clients: int) -> None:
    host, port = url.removeprefix("http://").split(":")
    counts: collections.Counter[str] = collections.Counter()
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(host, int(port), i % 4, until, counts) for i in range(clients)))
    print(json.dumps(dict(counts)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
