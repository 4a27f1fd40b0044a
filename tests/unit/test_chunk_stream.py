"""The chunk-stream client read in worker threads (protocol/chunk_stream.py), against a real
aiohttp server on loopback: frames as sent, kept-alive connections, the errors in words, a
stop from another thread, and whom it reached over TLS checked before the request goes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from packdist.core import tls
from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.errors import AuthError, ConnectError, RemoteError, TransferError
from packdist.http import HOLDER_HEADER, Timeouts, WrongHolder, error_frame, frame_header
from packdist.protocol.chunk_stream import ChunkStreams, StreamStop
from packdist.site import serving_tls
from packdist.site.authority import SiteAuthority

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHUNKS = [bytes([i]) * (1000 + 97 * i) for i in range(40)]


@contextlib.contextmanager
def serving(handler: Handler, context: ssl.SSLContext | None = None) -> Iterator[str]:
    """``handler`` at ``POST /v1/chunks`` of a real server in a thread of its own."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []
    runner: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/chunks", handler)
        r = web.AppRunner(app)
        await r.setup()
        site = web.TCPSite(r, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url.append(f"{'https' if context else 'http'}://127.0.0.1:{port}/v1/chunks")
        runner.append(r)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    ready.wait(10)
    try:
        yield url[0]
    finally:

        async def stop() -> None:
            await runner[0].cleanup()
            await asyncio.sleep(0.1)  # connections the client dropped finish closing

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def streams() -> Iterator[ChunkStreams]:
    """A client dialling in clear (or over TLS to no one: it trusts no authority)."""
    client = ChunkStreams(tls.client_context(None))
    yield client
    client.close()


def frames_of(chunks: list[bytes]) -> bytes:
    return b"".join(frame_header(Digest.of(c), Encoding.RAW, len(c), len(c)) + c for c in chunks)


async def stream_all(request: web.Request) -> web.StreamResponse:
    """The frames of every chunk asked for, written in small pieces (chunked encoding)."""
    asked = [Digest.parse(d) for d in (await request.json())["digests"]]
    by_digest = {Digest.of(c): c for c in CHUNKS}
    resp = web.StreamResponse()
    await resp.prepare(request)
    data = frames_of([by_digest[d] for d in asked])
    for i in range(0, len(data), 3001):  # frames cut across HTTP chunks anywhere
        await resp.write(data[i : i + 3001])
    await resp.write_eof()
    return resp


def ask(streams: ChunkStreams, url: str, chunks: list[bytes], **kw: object) -> list[bytes]:
    body = {"digests": [Digest.of(c).hex for c in chunks]}
    got = []
    for frame in streams.post(url, {}, body, **kw):  # type: ignore[arg-type]
        frame.digest.verify(frame.payload)
        got.append(bytes(frame.payload))  # a view of the stream's buffer: copied to keep
    return got


def test_every_frame_arrives_whole_and_in_order_however_the_stream_is_cut(
    streams: ChunkStreams,
) -> None:
    with serving(stream_all) as url:
        assert ask(streams, url, CHUNKS) == CHUNKS
        assert ask(streams, url, CHUNKS[::-1]) == CHUNKS[::-1]


def test_a_kept_alive_connection_serves_the_next_request_and_one_closed_since_is_redialled(
    streams: ChunkStreams,
) -> None:
    peers: list[object] = []

    async def counted(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return await stream_all(request)

    with serving(counted) as url:
        ask(streams, url, CHUNKS[:3])
        ask(streams, url, CHUNKS[3:6])
        assert peers[0] == peers[1], "the second request dialled again"
        # the server drops its idle connections: the next request dials again, unharmed
        for conns in streams._idle.values():
            for _, conn in conns:
                assert conn.sock is not None
                conn.sock.shutdown(2)
        assert ask(streams, url, CHUNKS[6:9]) == CHUNKS[6:9]


def test_an_error_frame_raises_its_words(streams: ChunkStreams) -> None:
    async def failing(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(frames_of(CHUNKS[:2]) + error_frame("chunk 1a2b… is missing"))
        await resp.write_eof()
        return resp

    with serving(failing) as url, pytest.raises(RemoteError, match="chunk 1a2b… is missing"):
        ask(streams, url, CHUNKS[:3])


def test_a_refused_credential_and_a_missing_chunk_are_the_errors_the_site_named(
    streams: ChunkStreams,
) -> None:
    async def refusing(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer good":
            return web.json_response({"error": "unknown or revoked enrollment token"}, status=401)
        return web.json_response({"error": "2 chunk(s) not on this site", "kind": "integrity"},
                                 status=404)  # fmt: skip

    with serving(refusing) as url:
        with pytest.raises(AuthError, match="refused the credential: unknown or revoked"):
            list(streams.post(url, {"Authorization": "Bearer bad"}, {"digests": []}))
        with pytest.raises(RemoteError, match="answered 404: 2 chunk") as caught:
            list(streams.post(url, {"Authorization": "Bearer good"}, {"digests": []}))
        assert caught.value.status == 404 and caught.value.kind.value == "integrity"


def test_a_stream_cut_mid_chunk_says_so(streams: ChunkStreams) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(frames_of(CHUNKS[:2])[:-10])
        assert request.transport is not None
        request.transport.close()
        return resp

    broken = r"dropped mid-transfer|cut mid-chunk"
    with serving(cut) as url, pytest.raises(TransferError, match=broken):
        ask(streams, url, CHUNKS[:2])


def test_a_refused_connection_names_the_address(streams: ChunkStreams) -> None:
    with pytest.raises(ConnectError, match=r"connection refused by http://127.0.0.1:9"):
        ask(streams, "http://127.0.0.1:9/v1/chunks", CHUNKS[:1])


def test_a_stop_from_another_thread_ends_a_stream_that_waits_for_bytes(
    streams: ChunkStreams,
) -> None:
    async def stalling(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(frames_of(CHUNKS[:1]))
        for _ in range(300):  # then nothing, until the reader hangs up: the reader waits
            if request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(0.1)
        return resp

    with serving(stalling) as url:
        stop = StreamStop()
        threading.Timer(0.5, stop.stop).start()
        started = time.monotonic()
        with pytest.raises(TransferError):
            ask(streams, url, CHUNKS[:2], stop=stop)
        assert time.monotonic() - started < 10, "the stop did not end the blocked read"


def _server_certificate(ca: SiteAuthority, name: str, tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    issued = ca.issue(
        csr.public_bytes(serialization.Encoding.PEM), name, ["127.0.0.1"], time.time()
    )
    cert, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert.write_bytes(issued.pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key_path


def test_over_tls_a_server_holding_another_certificate_of_the_authority_is_sent_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    ca_path, _ = SiteAuthority.paths(home)
    site_tls = serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1")
    cert, key = _server_certificate(ca, "dp1", tmp_path)
    bodies: list[object] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        bodies.append(json.loads(await request.read()))
        return await stream_all(request)

    streams = ChunkStreams(tls.client_context(ca_path))
    site_holder = {HOLDER_HEADER: "site"}
    body = {"digests": [Digest.of(c).hex for c in CHUNKS[:2]]}
    with serving(recording, site_tls.server) as url:  # the site's own certificate: taken
        got = [bytes(f.payload) for f in streams.post(url, site_holder, body)]
        assert got == CHUNKS[:2]
        streams.close()  # its kept-alive connection, before this server goes
    agent = tls.server_context(cert, key, ca_path, require_client=False)
    refused = "holds the certificate of server/dp1, not of site"
    with serving(recording, agent) as url, pytest.raises(WrongHolder, match=refused):
        list(streams.post(url, site_holder, body))  # a server's, at the site's address
    streams.close()
    assert len(bodies) == 1, "the request went to a server that is not the site"


def test_after_an_answer_that_closes_its_connection_the_next_request_dials_afresh() -> None:
    # http.client would otherwise dial again by itself, unchecked and with the connect
    # timeout as its read timeout: the slow second answer would then time out
    answers = 0

    async def closing_then_slow(request: web.Request) -> web.StreamResponse:
        nonlocal answers
        answers += 1
        if answers == 1:
            resp = await stream_all(request)
            resp.force_close()
            return resp
        await asyncio.sleep(1.0)  # longer than the connect timeout, within the read timeout
        return await stream_all(request)

    streams = ChunkStreams(tls.client_context(None), Timeouts(connect=0.3, read=5.0, total=None))
    with serving(closing_then_slow) as url:
        assert ask(streams, url, CHUNKS[:2]) == CHUNKS[:2]
        assert ask(streams, url, CHUNKS[2:4]) == CHUNKS[2:4]
    streams.close()


def test_an_error_answer_whose_body_is_cut_is_still_the_error_in_words(
    streams: ChunkStreams,
) -> None:
    async def dying(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=500)
        await resp.prepare(request)
        await resp.write(b'{"error": "disk')
        assert request.transport is not None
        request.transport.close()
        return resp

    with serving(dying) as url, pytest.raises(RemoteError, match=r"answered 500"):
        ask(streams, url, CHUNKS[:1])
