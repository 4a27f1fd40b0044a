"""The site's HTTP handlers, in process: heartbeat validation and a chunk stream to an agent
that stops reading."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from packdist.auth import hash_token, new_token
from packdist.core.manifest import Manifest
from packdist.http import HEADER_SIZE
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.importer import import_tree
from packdist.site.server import SiteServer


@pytest.fixture
def site(tmp_path: Path) -> tuple[SiteHome, str]:
    """A site with one server, ``dp1``; returns the home and dp1's enrollment token."""
    home = SiteHome.init(tmp_path / "site", "s")
    token = new_token()
    store = home.store()
    try:
        Service(store).add_server(
            "dp1", "http://127.0.0.1:9", hash_token(token), [], None, time.time()
        )
    finally:
        store.close()
    return home, token


@asynccontextmanager
async def serving(server: SiteServer) -> AsyncIterator[int]:
    runner = web.AppRunner(server.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


# --- heartbeats ---------------------------------------------------------------------------


def heartbeat(server: SiteServer, token: str, **kwargs: Any) -> tuple[int, Any]:
    """POST a heartbeat to a freshly started ``server``: ``(status, answer)``."""

    async def main() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with serving(server) as port, aiohttp.ClientSession(headers=headers) as s:
            url = f"http://127.0.0.1:{port}/v1/agent/heartbeat"
            async with s.post(url, **kwargs) as resp:
                return resp.status, await resp.json()

    try:
        return asyncio.run(main())
    finally:
        server.db.close()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        pytest.param(b"[]", "JSON object", id="a-list"),
        pytest.param(b'"up"', "JSON object", id="a-string"),
        pytest.param(b"{not json", "not JSON", id="not-json"),
        pytest.param(b'{"disk_free": "12"}', "disk_free", id="disk-free-text"),
        pytest.param(b'{"disk_free": 1.5}', "disk_free", id="disk-free-float"),
        pytest.param(b'{"disk_free": true}', "disk_free", id="disk-free-bool"),
        pytest.param(b'{"installed": "abc"}', "installed", id="installed-text"),
        pytest.param(b'{"installed": [1, 2]}', "installed", id="installed-numbers"),
        pytest.param(b'{"installed": {"a": 1}}', "installed", id="installed-object"),
        pytest.param(b'{"boot_id": 7}', "boot_id", id="boot-id-number"),
    ],
)
def test_a_malformed_heartbeat_is_answered_400_saying_why(
    site: tuple[SiteHome, str], body: bytes, words: str
) -> None:
    home, token = site
    status, answer = heartbeat(SiteServer(home), token, data=body)
    assert status == 400
    assert words in answer["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"boot_id": "b1", "disk_free": 10_000, "installed": ["a" * 64]},
        {"boot_id": "b1", "disk_free": None, "installed": []},
        {},
    ],
)
def test_a_wellformed_heartbeat_is_recorded(
    site: tuple[SiteHome, str], body: dict[str, Any]
) -> None:
    home, token = site
    status, answer = heartbeat(SiteServer(home), token, data=json.dumps(body))
    assert (status, answer) == (200, {"ok": True, "woken": 0, "interval": 2.0, "trusted_keys": []})


def one_file_package(home: SiteHome, tmp_path: Path, size: int) -> Manifest:
    """The manifest of a package of one file of ``size`` random bytes, imported."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(os.urandom(size))
    record, _ = import_tree(home, tree, "a", "1")
    store = home.store()
    try:
        return Manifest.parse(store.package_manifest(record.id)[0])
    finally:
        store.close()


# --- a chunk stream nobody reads ----------------------------------------------------------


def test_a_chunk_stream_to_an_agent_that_stops_reading_is_dropped(
    site: tuple[SiteHome, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    home, token = site
    manifest = one_file_package(home, tmp_path, 32 * 1024 * 1024)
    digests = [d.hex for d in manifest.chunk_sizes()]
    payload = json.dumps({"digests": digests}).encode()
    request = (
        f"POST /v1/chunks HTTP/1.1\r\nHost: site\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + payload
    monkeypatch.setattr("packdist.site.content_routes.WRITE_TIMEOUT", 1.0)
    server = SiteServer(home)

    def read_all(sock: socket.socket) -> bytes:
        received = bytearray()
        sock.settimeout(30)
        try:
            while data := sock.recv(1 << 20):
                received += data
        except ConnectionResetError:
            pass
        return bytes(received)

    async def main() -> bytes:
        async with serving(server) as port:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                await asyncio.to_thread(sock.connect, ("127.0.0.1", port))
                await asyncio.to_thread(sock.sendall, request)
                await asyncio.sleep(3.0)  # the agent reads nothing for three write timeouts
                return await asyncio.to_thread(read_all, sock)
            finally:
                sock.close()

    caplog.set_level(logging.INFO, logger="packdist.site")
    try:
        received = asyncio.run(main())
    finally:
        server.db.close()
    assert received.startswith(b"HTTP/1.1 200")
    whole = manifest.total_size + len(digests) * 36
    assert len(received) < whole  # the stream was cut, not completed
    assert not received.endswith(b"0\r\n\r\n")
    assert any("the agent read nothing" in r.getMessage() for r in caplog.records)


def _unchunked(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (strictly: every size line and CRLF)."""
    out = bytearray()
    while True:
        line, _, body = body.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            assert body == b"\r\n", "the last chunk, then the end"
            return bytes(out)
        out += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def test_a_chunk_stream_is_the_same_frames_to_http_1_0_and_1_1_clients(
    site: tuple[SiteHome, str], tmp_path: Path
) -> None:
    home, token = site
    manifest = one_file_package(home, tmp_path, 3 * 1024 * 1024 + 5)  # slices cut chunks
    sizes = manifest.chunk_sizes()
    payload = json.dumps({"digests": [d.hex for d in sizes], "accept": ["raw"]}).encode()
    server = SiteServer(home)

    def ask(version: str, port: int) -> tuple[bytes, bytes]:
        request = (
            f"POST /v1/chunks HTTP/{version}\r\nHost: site\r\nAuthorization: Bearer {token}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + payload
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            received = bytearray()
            while data := sock.recv(1 << 20):
                received += data
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        return head, body

    async def main() -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        async with serving(server) as port:
            return await asyncio.to_thread(ask, "1.0", port), await asyncio.to_thread(
                ask, "1.1", port
            )

    try:
        (head10, body10), (head11, body11) = asyncio.run(main())
    finally:
        server.db.close()
    assert head10.startswith(b"HTTP/1.0 200") and b"chunked" not in head10.lower()
    assert head11.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head11.lower()
    assert body10 == _unchunked(body11)
    assert len(body10) == sum(HEADER_SIZE + n for n in sizes.values())  # every frame, whole


@given(
    st.lists(st.binary(max_size=700), max_size=12),
    st.integers(min_value=1, max_value=600),
)
def test_a_streams_parts_go_in_runs_of_the_slice_whole_and_in_order(
    parts: list[bytes], most: int
) -> None:
    from packdist.site.stream_writes import slices

    runs = list(slices(parts, most))
    assert b"".join(bytes(p) for run, _ in runs for p in run) == b"".join(parts)
    assert all(n == sum(len(p) for p in run) for run, n in runs)
    assert all(n == most for _, n in runs[:-1]) and all(0 < n <= most for _, n in runs)
