"""``python -m bench handshake``: what a new connection costs the site, over HTTPS (TLS 1.3,
the client presenting a certificate of the site's authority, as an agent does) beside plain
HTTP: the site's CPU per connection (``/proc``), read while clients open connections as a
fleet reconnecting after a site restart would, each asking ``GET /healthz`` and closing.
The figure to scale: 10,000 agents reconnecting cost the site 10,000 times it."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from pathlib import Path

from bench.common import PackdistSetup

DESCRIPTION = "the site's CPU per new connection, HTTPS with a client certificate vs plain"


def _client_context(site_home: Path, folder: Path) -> ssl.SSLContext:
    """What an enrolled agent dials the site with: the site's authority trusted, a
    certificate of it presented."""
    from packdist.core import tls
    from packdist.site.authority import SiteAuthority

    key = tls.new_private_key()
    tls.save_key(key, folder / "client.key")
    issued = SiteAuthority.load(site_home).issue(
        tls.certificate_request(key), "bench-client", ["127.0.0.1"], time.time()
    )
    (folder / "client.pem").write_bytes(issued.pem)
    return tls.client_context(
        site_home / "tls" / "ca.pem", folder / "client.pem", folder / "client.key"
    )


async def _connections(port: int, ctx: ssl.SSLContext | None, n: int, parallel: int) -> int:
    """Open ``n`` connections, ``parallel`` at a time, each one request; how many answered."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answered = 0
    slots = asyncio.Semaphore(parallel)

    async def one() -> None:
        nonlocal answered
        async with slots:
            hostname = "127.0.0.1" if ctx is not None else None
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname=hostname
            )
            writer.write(request)
            answer = await reader.read()
            writer.close()
            if b" 200 " in answer[:20]:
                answered += 1

    await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    return answered


def _measure(tls_on: bool, n: int, parallel: int, work: Path) -> dict[str, float]:
    setup = PackdistSetup(work, tls=tls_on)
    setup.serve()
    try:
        ctx = _client_context(setup.site, work) if tls_on else None
        port = int(setup.site_url.rsplit(":", 1)[1])
        cpu0, t0 = setup.cpu_seconds("site"), time.monotonic()
        answered = asyncio.run(_connections(port, ctx, n, parallel))
        cpu, took = setup.cpu_seconds("site") - cpu0, time.monotonic() - t0
    finally:
        setup.stop()
    return {"answered": answered, "cpu_ms": 1000 * cpu / max(1, answered), "per_s": n / took}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench handshake", description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=50)
    args = parser.parse_args(argv)
    rows = []
    for tls_on in (False, True):
        with tempfile.TemporaryDirectory(prefix="packdist-handshake-") as tmp:
            rows.append((tls_on, _measure(tls_on, args.connections, args.parallel, Path(tmp))))
    plain = rows[0][1]["cpu_ms"]
    print(f"{args.connections} connections, {args.parallel} at a time, GET /healthz each\n")
    print("| transport | answered | site CPU per connection | connections/s | vs plain |")
    print("|---|---:|---:|---:|---:|")
    for tls_on, r in rows:
        name = "HTTPS, client certificate" if tls_on else "plain HTTP (anchor)"
        ratio = r["cpu_ms"] / plain if plain else float("nan")
        print(
            f"| {name} | {r['answered']:.0f} | {r['cpu_ms']:.2f} ms | {r['per_s']:.0f}"
            f" | {ratio:.1f}x |"
        )
    https = rows[1][1]["cpu_ms"]
    print(f"\n10,000 agents reconnecting at once: about {10 * https:.1f} s of the site's CPU")
    return 0
