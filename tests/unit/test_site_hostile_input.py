"""Hostile input at the site's doors, in process: credentials of any bytes, login forms that
lie about themselves, ``next=`` paths made to leave the site, a flood of password guesses,
and errors a handler raises on purpose."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packdist.auth import bearer, new_token
from packdist.errors import AuthError, BadSignature, RateLimited, StoreError
from packdist.http import error_middleware
from packdist.serving import guard
from packdist.site import dashboard, gate, operator
from packdist.site.dashboard import Dashboard
from packdist.site.home import SiteHome
from packdist.site.server import SiteServer

EXAMPLES = int(os.environ.get("PACKDIST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SITE = "http://site.example:8700"

# text as aiohttp hands it over: header bytes that are not UTF-8 arrive as surrogates
header_text = st.lists(
    st.text(max_size=8)
    | st.sampled_from(
        ["\udcff", "\udc80", "\t", " ", "\x00", "é", "Bearer ", "bearer ", "pdo_", "pdt_", "."]
    )
).map("".join)


# --- credentials of any bytes ------------------------------------------------------------------


@FUZZ
@given(header_text)
def test_a_bearer_header_of_any_characters_is_refused_as_a_credential_error(
    header: str,
) -> None:
    try:
        token = bearer(header)
    except AuthError:
        return
    assert token.isascii() and token.isprintable() and " " not in token


@FUZZ
@given(
    st.one_of(header_text, st.from_regex(r"v2\.admin\.[0-9]{1,12}\.[A-Za-z0-9_-]{1,20}\..{0,50}"))
)
def test_a_session_cookie_of_any_characters_is_refused_not_raised(cookie: str) -> None:
    assert _CRED.check_session(cookie) is False


def _credential() -> operator.OperatorCredential:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="packdist-op-"))
    operator.create(root)
    operators = operator.load(root)
    cred = operators.get(operator.ADMIN) if operators is not None else None
    assert cred is not None
    return cred


_CRED = _credential()


def test_a_forged_cookie_with_unicode_digits_or_non_ascii_mac_is_refused() -> None:
    real = _CRED.new_session(60)
    body, _, mac = real.rpartition(".")
    assert _CRED.check_session(real)
    assert not _CRED.check_session(f"{body}.{mac[:-1]}é")  # compare_digest raised on this
    assert not _CRED.check_session("v2.admin.²³.abc." + mac)  # '²'.isdigit() is True


# --- next= never leaves the site -------------------------------------------------------------


def browser_location(location: str) -> str:
    """Where a browser goes for ``Location: location`` on a page of SITE: the WHATWG URL
    parser strips leading/trailing C0 controls and spaces, drops tabs and newlines, and reads
    a backslash as a slash in http(s) URLs."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip(
        "\x00\x01\x02\x03\x04\x05\x06\x07\x08"
        "\x0b\x0c\x0e\x0f\x10\x11\x12\x13\x14"
        "\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d"
        "\x1e\x1f "
    )
    return urljoin(SITE + "/login", cleaned.replace("\\", "/"))


def same_origin(location: str) -> bool:
    parts = urlsplit(browser_location(location))
    return (parts.scheme, parts.netloc) == ("http", "site.example:8700")


NASTY_NEXT = [
    "/%09/evil.example/x",
    "/\t/evil.example/x",
    "/\n/evil.example",
    "//evil.example/",
    "/\\evil.example",
    "/%5Cevil.example",
    "/%2F/evil.example",
    "/%252F%252Fevil.example",
    " //evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "/\x00/evil.example",
]


@pytest.mark.parametrize("nxt", NASTY_NEXT)
def test_known_tricks_in_next_lead_back_to_the_front_page(nxt: str) -> None:
    assert Dashboard._next(nxt) == "/"


@FUZZ
@given(
    st.one_of(
        st.text(),
        st.lists(
            st.sampled_from(
                [
                    "/",
                    "\\",
                    "%09",
                    "%2F",
                    "%5C",
                    "\t",
                    "\n",
                    " ",
                    "%",
                    "2F",
                    "evil.example",
                    "jobs",
                    "?",
                    "#",
                    ":",
                    "@",
                    "http:",
                    ".",
                ]
            )
        ).map("".join),
    )
)
def test_next_always_leads_to_a_page_of_this_site(nxt: str) -> None:
    location = Dashboard._next(nxt)
    assert same_origin(location), (nxt, location, browser_location(location))


def test_a_plain_path_in_next_is_kept() -> None:
    for path in ("/", "/jobs/j-1", "/jobs/abc?x=1", "/api/overview"):
        assert Dashboard._next(path) == path


# --- the login form and its limits, over HTTP ---------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SiteHome, str]:
    monkeypatch.setattr(dashboard, "FAILED_LOGIN_DELAY", 0.0)
    home = SiteHome.init(tmp_path / "site", "s")
    return home, operator.create(home.root)


@asynccontextmanager
async def serving(server: SiteServer) -> AsyncIterator[str]:
    server.site_name = "s"
    runner = web.AppRunner(server.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        server.db.close()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(
            "application/x-www-form-urlencoded; charset=bogus", b"password=a", id="bogus-charset"
        ),
        pytest.param(
            "application/x-www-form-urlencoded", b"password=\xff\xfe", id="undecodable-bytes"
        ),
        pytest.param(
            "application/x-www-form-urlencoded", b"password=%ff%fe", id="undecodable-escapes"
        ),
        pytest.param("multipart/form-data; boundary=zz", b"--zz\r\nxxxx", id="malformed-multipart"),
        pytest.param("multipart/form-data", b"--zz\r\n", id="multipart-without-boundary"),
        pytest.param("text/plain", b"password=a", id="not-a-form"),
        pytest.param("application/x-www-form-urlencoded", b"a=1&" * 100, id="too-many-fields"),
    ],
)
def test_a_login_form_that_lies_about_itself_is_answered_400(
    site: tuple[SiteHome, str], content_type: str, body: bytes
) -> None:
    home, _ = site

    async def main() -> tuple[int, str]:
        async with serving(SiteServer(home)) as base, aiohttp.ClientSession() as s:
            headers = {"Content-Type": content_type}
            async with s.post(f"{base}/login", data=body, headers=headers) as r:
                return r.status, await r.text()

    status, text = asyncio.run(main())
    assert status == 400, text
    assert "form" in text


def test_a_login_body_over_its_limit_is_refused_before_it_is_read(
    site: tuple[SiteHome, str],
) -> None:
    home, _ = site

    async def main() -> tuple[int, float]:
        async with serving(SiteServer(home)) as base:
            host, port = base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            started = time.monotonic()
            writer.write(
                b"POST /login HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 67108864\r\n\r\npassword="
            )  # says 64 MiB, sends 9 bytes: the answer must not wait for the rest
            line = await asyncio.wait_for(reader.readline(), 10)
            took = time.monotonic() - started
            writer.close()
            # closed on both ends before the runner's clean-up: else the server, still
            # lingering for the 64 MiB it was promised, holds the clean-up up for 10 s
            await writer.wait_closed()
            return int(line.split()[1]), took

    status, took = asyncio.run(main())
    assert status == 413
    assert took < 5


def test_the_chunk_route_still_takes_a_large_body(site: tuple[SiteHome, str]) -> None:
    home, _ = site
    token = new_token()
    store = home.store()
    try:
        from packdist.auth import hash_token

        store.add_server("dp1", "http://127.0.0.1:9", hash_token(token), [], None, time.time())
    finally:
        store.close()
    body = {"digests": ["ab" * 32] * 4096, "accept": ["raw"]}  # ~270 KB: above SMALL_BODY

    async def main() -> tuple[int, str]:
        async with serving(SiteServer(home)) as base, aiohttp.ClientSession() as s:
            headers = {"Authorization": f"Bearer {token}"}
            async with s.post(f"{base}/v1/chunks", json=body, headers=headers) as r:
                return r.status, await r.text()

    status, text = asyncio.run(main())
    assert status == 404 and "not on this site" in text  # read and understood, not 413


# --- password guesses cost a bounded amount ---------------------------------------------------


def test_password_checks_run_one_at_a_time_and_the_excess_is_refused_at_once() -> None:
    running, most = 0, 0

    def slow_check() -> bool:
        nonlocal running, most
        running += 1
        most = max(most, running)
        time.sleep(0.2)
        running -= 1
        return False

    async def main() -> list[object]:
        g = gate.PasswordGate()
        started = time.monotonic()
        results = await asyncio.gather(
            *(g.check(f"10.0.0.{i}", slow_check) for i in range(20)), return_exceptions=True
        )
        assert time.monotonic() - started < 2  # nobody queued behind the one check
        g.close()
        return results

    results = asyncio.run(main())
    assert most == 1
    assert results.count(False) == 1
    assert all(isinstance(r, RateLimited) for r in results if r is not False)


def test_guesses_from_one_address_and_from_everyone_are_rate_limited() -> None:
    async def main() -> tuple[int, int]:
        g = gate.PasswordGate()
        one = 0
        for _ in range(20):
            try:
                await g.check("10.0.0.1", lambda: False)
                one += 1
            except RateLimited as exc:
                assert exc.retry_after > 0
        everyone = 0
        for i in range(50):
            try:
                await g.check(f"10.1.0.{i}", lambda: False)
                everyone += 1
            except RateLimited:
                pass
        g.close()
        return one, everyone

    one, everyone = asyncio.run(main())
    assert one == gate.PER_CLIENT_BURST
    assert everyone <= gate.SITE_BURST  # the first address's attempts count here too


def test_a_malformed_or_wrong_shaped_bearer_costs_no_scrypt(
    site: tuple[SiteHome, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, password = site
    calls = []
    real = operator._scrypt
    monkeypatch.setattr(operator, "_scrypt", lambda *a: calls.append(1) or real(*a))

    async def main() -> list[int]:
        statuses = []
        async with serving(SiteServer(home)) as base, aiohttp.ClientSession() as s:
            for auth in (
                "Bearer pdt_" + "a" * 43,
                "Bearer x",
                "Bearer " + password + "x",
                "Basic abc",
                "Bearer pdo_" + "é" * 24,
            ):
                async with s.get(f"{base}/metrics", headers={"Authorization": auth}) as r:
                    statuses.append(r.status)
            for _ in range(3):  # the right one: one scrypt, then remembered
                headers = {"Authorization": f"Bearer {password}"}
                async with s.get(f"{base}/metrics", headers=headers) as r:
                    statuses.append(r.status)
        return statuses

    assert asyncio.run(main()) == [401] * 5 + [200] * 3
    assert len(calls) == 1


# --- errors raised on purpose are answered 4xx, in one log line --------------------------------


def test_handled_errors_are_answered_with_their_status_and_logged_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def bad_signature(request: web.Request) -> web.Response:
        raise BadSignature("manifest signature does not verify")

    async def store_down(request: web.Request) -> web.Response:
        raise StoreError("database is locked")

    async def bug(request: web.Request) -> web.Response:
        return web.Response(text=str(1 / 0))

    async def main() -> list[tuple[int, str]]:
        app = web.Application(middlewares=[guard({}, 1024), error_middleware])
        app.router.add_post("/sig", bad_signature)
        app.router.add_get("/store", store_down)
        app.router.add_get("/bug", bug)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        out = []
        try:
            async with aiohttp.ClientSession() as s:
                for method, path in (("POST", "/sig"), ("GET", "/store"), ("GET", "/bug")):
                    async with s.request(method, base + path) as r:
                        out.append((r.status, await r.text()))
        finally:
            await runner.cleanup()
        return out

    with caplog.at_level(logging.DEBUG, logger="packdist"):
        (sig, sig_text), (store, _), (bug_status, bug_text) = asyncio.run(main())
    assert (sig, store, bug_status) == (400, 500, 500)
    assert "does not verify" in sig_text
    assert "ZeroDivisionError" not in bug_text  # no detail of a bug goes to the client
    handled = [r for r in caplog.records if "/sig" in r.getMessage() or "/store" in r.getMessage()]
    assert handled and all(r.exc_info is None for r in handled)
    assert [r for r in caplog.records if r.exc_info and "/bug" in r.getMessage()]


def test_a_login_with_a_tricky_next_redirects_to_the_front_page_over_http(
    site: tuple[SiteHome, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, password = site
    monkeypatch.setattr(gate, "PER_CLIENT_BURST", 100.0)  # one login per trick, all right
    monkeypatch.setattr(gate, "SITE_BURST", 100.0)
    monkeypatch.setattr(gate, "PER_NAME_BURST", 100.0)

    async def main() -> list[str]:
        out = []
        async with serving(SiteServer(home)) as base, aiohttp.ClientSession() as s:
            for nxt in [*NASTY_NEXT, "/jobs/j-1?x=1"]:
                data = {"password": password, "next": nxt}
                async with s.post(f"{base}/login", data=data, allow_redirects=False) as r:
                    assert r.status == 303, await r.text()
                    out.append(r.headers["Location"])
        return out

    locations = asyncio.run(main())
    assert locations == ["/"] * len(NASTY_NEXT) + ["/jobs/j-1?x=1"]
    assert all(same_origin(loc) for loc in locations)


@pytest.mark.parametrize(
    "query", ["after=99999999999999999999", "after=-99999999999999999999", "limit=1e9", "after=²"]
)
def test_an_events_query_with_a_number_too_big_or_odd_is_answered_400(
    site: tuple[SiteHome, str], query: str
) -> None:
    home, password = site  # a 20-digit after reached SQLite and answered 500

    async def main() -> tuple[int, str]:
        async with serving(SiteServer(home)) as base, aiohttp.ClientSession() as s:
            headers = {"Authorization": f"Bearer {password}"}
            async with s.get(f"{base}/api/events?{query}", headers=headers) as r:
                return r.status, await r.text()

    status, text = asyncio.run(main())
    assert status == 400, text
    assert "whole number" in text
