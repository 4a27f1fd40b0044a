"""A real ``packdist site serve`` (and an agent) against what an outside probe sent: bytes
that are not UTF-8 in credentials, login bodies that lie, clients that send a byte a second.
Each must get a 4xx or be dropped in bounded time, and the log must show no traceback."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests import harness as h
from tests.integration.hostile import (
    log_problems,
    raw_request,
    request_bytes,
    started_site,
    trickle,
)

FORM = b"application/x-www-form-urlencoded"

#: (what, request, the statuses allowed): each once answered 500 with a traceback
GARBAGE = [
    (
        "bearer that is not UTF-8, agent route",
        request_bytes(b"POST", b"/v1/agent/hello", [(b"Authorization", b"Bearer \xff\xfe")], b"{}"),
        {401},
    ),
    (
        "bearer that is not UTF-8, chunk route",
        request_bytes(b"POST", b"/v1/chunks", [(b"Authorization", b"Bearer pdt_\xc3\x28")], b"{}"),
        {401},
    ),
    (
        "bearer that is not UTF-8, metrics",
        request_bytes(b"GET", b"/metrics", [(b"Authorization", b"Bearer \xff\xfe")]),
        {401},
    ),
    (
        "bearer that is not UTF-8, JSON API",
        request_bytes(b"GET", b"/api/overview", [(b"Authorization", b"Bearer pdo_\x80")]),
        {401},
    ),
    (
        "session cookie with non-ASCII characters",
        request_bytes(
            b"GET", b"/api/overview", [(b"Cookie", "packdist_testsite=v1.1.a.é".encode())]
        ),
        {401},
    ),
    (
        "session cookie of bytes that are not UTF-8",
        request_bytes(b"GET", b"/", [(b"Cookie", b"packdist_testsite=v1.\xff.\xfe.x")]),
        {303},
    ),
    (
        "login with a bogus charset",
        request_bytes(b"POST", b"/login", [(b"Content-Type", FORM + b"; charset=bogus")], b"a=1"),
        {400},
    ),
    (
        "login of undecodable bytes",
        request_bytes(b"POST", b"/login", [(b"Content-Type", FORM)], b"password=\xff\xfe"),
        {400},
    ),
    (
        "login as a malformed multipart body",
        request_bytes(
            b"POST",
            b"/login",
            [(b"Content-Type", b"multipart/form-data; boundary=zz")],
            b"--zz\r\nx",
        ),
        {400},
    ),
    (
        "login announcing 64 MiB",
        request_bytes(b"POST", b"/login", [(b"Content-Type", FORM)], b"password=", 64 << 20),
        {413},
    ),
    (
        "heartbeat of bytes that are not JSON, wrong token",
        request_bytes(
            b"POST", b"/v1/agent/heartbeat", [(b"Authorization", b"Bearer pdt_x")], b"\xff{"
        ),
        {401},
    ),
    (
        "a header line aiohttp cannot parse",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x01: y\r\n\r\n",
        {400},
    ),
]


def test_unauthenticated_garbage_is_answered_4xx_and_never_logged_as_an_error(
    tmp_path: Path,
) -> None:
    site, _ = started_site(tmp_path)
    try:
        wrong = []
        for what, data, allowed in GARBAGE:
            status, answer = raw_request(site.url, data)
            if status not in allowed:
                wrong.append(f"{what}: {status} (wanted {sorted(allowed)}): {answer[-200:]!r}")
        assert not wrong, "\n".join(wrong)
        assert h.http_get(f"{site.url}/healthz")[0] == 200
    finally:
        site.stop()
    assert log_problems(site.log_path) == [], site.log_tail(60)


SLOW_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
SLOW_BODY_HEAD = (
    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 500\r\n\r\n"
)
#: what the servers promise (packdist.serving): headers within 10 s, a small body within 20 s;
#: the bound here is loose on purpose, a busy machine must not trip it
HEADERS_BOUND = 20.0
BODY_BOUND = 35.0


def test_clients_trickling_headers_or_a_body_are_dropped_while_others_are_served(
    tmp_path: Path,
) -> None:
    site, token = started_site(tmp_path)
    agent = h.Agent(
        "dp1", tmp_path / "agent", tmp_path / "logs", site_url=site.url, token=token, tls=False
    )  # raw HTTP bytes on a socket, as the site's (hostile.started_site)
    agent.start()
    done = threading.Event()
    try:
        with ThreadPoolExecutor(3) as pool:
            clients = {
                "site_headers": pool.submit(trickle, site.url, SLOW_HEADERS, 1.0, done.is_set),
                "agent_headers": pool.submit(trickle, agent.url, SLOW_HEADERS, 1.0, done.is_set),
                "body": pool.submit(
                    trickle, site.url, b"p" * 500, 1.0, done.is_set, head=SLOW_BODY_HEAD
                ),
            }
            slowest = 0.0
            deadline = time.monotonic() + BODY_BOUND + 5
            while time.monotonic() < deadline and not all(f.done() for f in clients.values()):
                for url in (site.url, agent.url):
                    started = time.monotonic()
                    assert h.http_get(f"{url}/healthz", timeout=5)[0] == 200
                    slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.5)
            done.set()
            results = {name: f.result() for name, f in clients.items()}
        print(f"slow clients dropped after: {results}; slowest /healthz meanwhile {slowest:.3f}s")
        site_after = results["site_headers"]["dropped_after"]
        agent_after = results["agent_headers"]["dropped_after"]
        body_after = results["body"]["dropped_after"]
        assert site_after is not None and site_after < HEADERS_BOUND, results
        assert agent_after is not None and agent_after < HEADERS_BOUND, results
        assert body_after is not None and body_after < BODY_BOUND, results
        assert slowest < 2.0  # everyone else was served meanwhile
    finally:
        done.set()
        agent.stop()
        site.stop()
    assert log_problems(site.log_path) == [], site.log_tail(40)
    assert log_problems(agent.log_path) == [], agent.log_tail(40)
