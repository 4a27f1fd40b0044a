"""The operator credential and the dashboard's doors, in process: what needs a login, what a
session cookie looks like, and that no secret or unescaped value ever reaches a page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from packdist.auth import hash_token, new_token
from packdist.config import Settings
from packdist.service import Service
from packdist.site import dashboard, operator
from packdist.site.home import SiteHome
from packdist.site.server import SiteServer

# --- the credential itself --------------------------------------------------------------------


def admin_of(home: Path) -> operator.OperatorCredential:
    operators = operator.load(home)
    assert operators is not None
    found = operators.get(operator.ADMIN)
    assert found is not None
    return found


def test_password_is_stored_only_as_a_hash(tmp_path: Path) -> None:
    password = operator.create(tmp_path)
    text = (tmp_path / operator.FILE_NAME).read_text()
    assert password not in text
    assert (tmp_path / operator.FILE_NAME).stat().st_mode & 0o077 == 0
    cred = admin_of(tmp_path)
    assert cred.check_password(password)
    assert not cred.check_password(password + "x")
    assert not cred.check_password("")
    assert cred.salt.hex() not in repr(cred) and "session_secret" not in repr(cred)


def test_sessions_expire_and_cannot_be_forged(tmp_path: Path) -> None:
    operator.create(tmp_path)
    cred = admin_of(tmp_path)
    now = 1_000_000.0
    cookie = cred.new_session(60, now=now)
    assert cred.check_session(cookie, now=now + 59)
    assert not cred.check_session(cookie, now=now + 61)
    body, _, mac = cookie.rpartition(".")
    version, name, expires, nonce = body.split(".")
    assert (version, name) == ("v2", "admin")  # the cookie says which operator it is
    longer = f"{version}.{name}.{int(expires) + 3600}.{nonce}.{mac}"
    assert not cred.check_session(longer, now=now)
    assert not cred.check_session("", now=now)
    assert not cred.check_session("v2.admin.9999999999.x.", now=now)


def test_new_password_ends_old_password_and_sessions(tmp_path: Path) -> None:
    old = operator.create(tmp_path)
    cache = operator.CredentialCache(tmp_path)
    first = cache.get()
    assert first is not None and cache.check_bearer(old)
    cookie = admin_of(tmp_path).new_session(3600)
    assert first.for_session(cookie) is not None
    time.sleep(0.01)  # a new mtime for the cache to notice
    new = operator.create(tmp_path)
    second = cache.get()
    assert second is not None and second != first
    assert not cache.check_bearer(old)
    assert cache.check_bearer(new)
    assert second.for_session(cookie) is None


def test_site_without_credential_accepts_nobody(tmp_path: Path) -> None:
    cache = operator.CredentialCache(tmp_path)
    assert cache.get() is None
    assert not cache.check_bearer("")
    assert not cache.check_bearer("pdo_anything")


# --- the dashboard over HTTP ------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SiteHome, str, str]:
    """A site with an operator password and one server whose URL tries HTML injection;
    returns the home, the password and the server's enrollment token."""
    monkeypatch.setattr(dashboard, "FAILED_LOGIN_DELAY", 0.0)
    home = SiteHome.init(tmp_path / "site", "s")
    password = operator.create(home.root)
    token = new_token()
    store = home.store()
    try:
        Service(store).add_server(
            "dp1", "http://127.0.0.1:9/<script>alert(1)</script>", hash_token(token), [], None, 0.0
        )
    finally:
        store.close()
    return home, password, token


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


Answer = tuple[int, dict[str, str], str]


def run(
    home: SiteHome,
    script: Callable[[aiohttp.ClientSession, str], Any],
    settings: Settings | None = None,
) -> Any:
    async def main() -> Any:
        async with (
            serving(SiteServer(home, settings=settings)) as base,
            aiohttp.ClientSession() as s,
        ):
            return await script(s, base)

    return asyncio.run(main())


async def get(s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Answer:
    async with s.get(url, headers=headers or {}, allow_redirects=False) as r:
        return r.status, dict(r.headers), await r.text()


async def login(s: aiohttp.ClientSession, base: str, password: str, nxt: str = "/") -> Answer:
    data = {"password": password, "next": nxt}
    async with s.post(f"{base}/login", data=data, allow_redirects=False) as r:
        return r.status, dict(r.headers), await r.text()


def cookie_of(headers: dict[str, str]) -> str:
    return headers["Set-Cookie"].split(";", 1)[0]


def test_pages_need_a_login_and_healthz_does_not(site: tuple[SiteHome, str, str]) -> None:
    home, _password, _ = site

    async def script(s: aiohttp.ClientSession, base: str) -> None:
        status, headers, _ = await get(s, f"{base}/")
        assert status == 303 and headers["Location"] == "/login?next=/"
        status, headers, _ = await get(s, f"{base}/jobs/abc")
        assert status == 303 and headers["Location"] == "/login?next=/jobs/abc"
        for path in ("/api/overview", "/api/jobs/abc", "/api/events", "/metrics"):
            status, headers, body = await get(s, f"{base}{path}")
            assert status == 401, path
            assert "operator credential" in json.loads(body)["error"]
        status, _, body = await get(s, f"{base}/healthz")
        assert status == 200
        status, _, body = await get(s, f"{base}/login")
        assert status == 200 and 'type="password"' in body
        status, _, _ = await get(s, f"{base}/static/dashboard.js")
        assert status == 200

    run(home, script)


def test_login_sets_a_strict_http_only_session(site: tuple[SiteHome, str, str]) -> None:
    home, password, _ = site

    async def script(s: aiohttp.ClientSession, base: str) -> None:
        status, _, body = await login(s, base, "pdo_wrong")
        assert status == 401 and "Wrong password" in body
        status, headers, _ = await login(s, base, password, nxt="/jobs/abc")
        assert status == 303 and headers["Location"] == "/jobs/abc"
        flags = headers["Set-Cookie"].lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
        cookie = {"Cookie": cookie_of(headers)}
        status, headers, body = await get(s, f"{base}/", cookie)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        status, _, body = await get(s, f"{base}/api/overview", cookie)
        assert status == 200 and "html" in json.loads(body)
        # no open redirect
        _, headers, _ = await login(s, base, password, nxt="//evil.example/")
        assert headers["Location"] == "/"
        _, headers, _ = await login(s, base, password, nxt="https://evil.example/")
        assert headers["Location"] == "/"
        # logging out clears the cookie
        async with s.post(f"{base}/logout", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
            assert (
                "Max-Age=0" in r.headers["Set-Cookie"]
                or "expires" in r.headers["Set-Cookie"].lower()
            )

    run(home, script)


def test_bearer_works_for_api_and_metrics(site: tuple[SiteHome, str, str]) -> None:
    home, password, token = site

    async def script(s: aiohttp.ClientSession, base: str) -> None:
        good = {"Authorization": f"Bearer {password}"}
        for path in ("/api/overview", "/api/events", "/metrics"):
            status, _, _ = await get(s, f"{base}{path}", good)
            assert status == 200, path
        # an agent's enrollment token is not an operator credential
        status, _, _ = await get(s, f"{base}/metrics", {"Authorization": f"Bearer {token}"})
        assert status == 401
        status, headers, _ = await get(s, f"{base}/metrics", good)
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")

    run(home, script)


def test_metrics_can_be_opened_by_configuration(site: tuple[SiteHome, str, str]) -> None:
    home, _, _ = site

    async def script(s: aiohttp.ClientSession, base: str) -> None:
        status, _, body = await get(s, f"{base}/metrics")
        assert status == 200 and "packdist_servers 1" in body
        status, _, _ = await get(s, f"{base}/api/overview")
        assert status == 401  # the rest stays closed

    run(home, script, Settings(metrics_auth=False))


def test_no_secret_and_no_unescaped_value_reaches_a_page(
    site: tuple[SiteHome, str, str],
) -> None:
    home, password, token = site
    stored = json.loads((home.root / operator.FILE_NAME).read_text())["operators"]["admin"]

    async def script(s: aiohttp.ClientSession, base: str) -> list[str]:
        _, headers, _ = await login(s, base, password)
        cookie = {"Cookie": cookie_of(headers)}
        bodies = []
        for path in ("/", "/api/overview", "/api/events", "/metrics"):
            status, _, body = await get(s, f"{base}{path}", cookie)
            assert status == 200, path
            bodies.append(body)
        return bodies

    bodies = run(home, script)
    secrets = [password, token, hash_token(token), stored["password_hash"], stored["salt"]]
    secrets.append(stored["session_secret"])
    for body in bodies:
        for secret in secrets:
            assert secret not in body
    page = bodies[0]
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    overview = json.loads(bodies[1])
    assert "<script>alert(1)" not in overview["html"]


def test_site_without_operator_password_says_how_to_set_one(tmp_path: Path) -> None:
    home = SiteHome.init(tmp_path / "site", "s")  # made before operator passwords existed

    async def script(s: aiohttp.ClientSession, base: str) -> None:
        status, _, body = await get(s, f"{base}/login")
        assert status == 200 and "packdist site operator-password" in body
        status, _, _ = await login(s, base, "")
        assert status == 401
        status, _, _ = await get(s, f"{base}/api/overview", {"Authorization": "Bearer "})
        assert status == 401

    run(home, script)


def test_a_job_page_pages_through_its_instructions_and_refuses_an_unknown_state(
    site: tuple[SiteHome, str, str],
) -> None:
    from tests.unit.store_conformance import add_package

    home, password, _ = site
    store = home.store()
    try:
        pkg = add_package(store, "app")
        job = Service(store).distribute(pkg.id, ["dp1"], 1.0)
    finally:
        store.close()

    async def script(s: aiohttp.ClientSession, base: str) -> None:
        good = {"Authorization": f"Bearer {password}"}
        status, _, body = await get(s, f"{base}/jobs/{job}?state=pending&limit=5", good)
        assert status == 200
        assert f'data-src="/api/jobs/{job}?state=pending&amp;limit=5"' in body  # kept live
        status, _, body = await get(s, f"{base}/api/jobs/{job}?state=pending&offset=1", good)
        doc = json.loads(body)
        assert status == 200 and doc["job"]["instructions"] == []
        assert doc["page"] == {"state": "pending", "offset": 1, "limit": 200, "matching": 1}
        for bad in ("state=lost", "offset=-1", "limit=x"):
            status, _, body = await get(s, f"{base}/api/jobs/{job}?{bad}", good)
            assert status == 400, bad
            assert len(body.strip().splitlines()) == 1 and "Traceback" not in body

    run(home, script)


def test_the_job_page_offers_cancel_and_retry_to_an_operator_and_not_to_a_viewer(
    site: tuple[SiteHome, str, str],
) -> None:
    from packdist.site.operator import Role
    from packdist.site.operator_book import add_operator
    from tests.unit.store_conformance import add_package

    home, password, _ = site
    viewer = add_operator(home.root, "vera", Role.VIEWER)
    store = home.store()
    try:
        job = Service(store).distribute(add_package(store, "app").id, ["dp1"], 1.0)
    finally:
        store.close()

    async def script(s: aiohttp.ClientSession, base: str) -> tuple[str, str]:
        pages = []
        for credential in (password, viewer):
            status, _, body = await get(
                s, f"{base}/jobs/{job}", {"Authorization": f"Bearer {credential}"}
            )
            assert status == 200
            pages.append(body)
        return pages[0], pages[1]

    admin_page, viewer_page = run(home, script)
    assert f'<button type="button" data-post="/api/jobs/{job}/cancel"' in admin_page
    assert f'<button type="button" data-post="/api/jobs/{job}/retry"' in admin_page
    assert "data-post" not in viewer_page
