"""Named operators and their roles, on a real site over real HTTP: a viewer reads and
changes nothing, an operator's cancel and retry are events naming it, a removed or reset
operator is refused at once, and password guesses are limited per address and per name."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests import harness as h

Answer = tuple[int, dict[str, str], bytes]


def call(
    site: h.Site,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str | None = None,
) -> Answer:
    """One request, redirects not followed (a login's 303 carries the cookie), from the
    local address ``source`` if given (another client, as the site sees it)."""
    parts = urlsplit(site.url)
    assert parts.hostname is not None and parts.port is not None
    bind = (source, 0) if source else None
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(site.ca))
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=10, context=context, source_address=bind
        )
    else:
        conn = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=10, source_address=bind
        )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def bearer(password: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {password}"}


def login(site: h.Site, password: str, source: str | None = None) -> Answer:
    form = urlencode({"password": password, "next": "/"}).encode()
    return call(
        site,
        "POST",
        "/login",
        {"Content-Type": "application/x-www-form-urlencoded"},
        form,
        source=source,
    )


def session_of(site: h.Site, password: str) -> dict[str, str]:
    status, headers, body = login(site, password)
    assert status == 303, body[:300]
    return {"Cookie": headers["Set-Cookie"].split(";", 1)[0]}


def add_operator(site: h.Site, name: str, role: str) -> str:
    doc = site.json("operator", "add", name, "--role", role)
    assert doc["name"] == name and doc["role"] == role, doc
    return str(doc["password"])


def events_of(site: h.Site, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = site.json("events", "--job", job_id, "--limit", "0")
    return found


@pytest.fixture
def stalled(tmp_path: Path) -> Iterator[tuple[h.Site, str]]:
    """A running site with a job that cannot finish (its one server never answers)."""
    site = h.make_site(tmp_path)
    site.add_server("dp1", f"http://127.0.0.1:{h.free_port()}")
    tree = h.make_tree(tmp_path / "src", {"a.txt": 100}, seed=1)
    try:
        site.start()
        site.create_package(tree, "app", "1.0")
        yield site, site.distribute("app@1.0", ["dp1"])
    finally:
        site.close()


def test_a_viewer_reads_the_dashboard_and_metrics_but_its_cancel_is_refused_and_changes_nothing(
    stalled: tuple[h.Site, str],
) -> None:
    site, job_id = stalled
    vera = add_operator(site, "vera", "viewer")
    for path in ("/", f"/jobs/{job_id}", "/api/overview", f"/api/jobs/{job_id}", "/metrics"):
        status, _, body = call(site, "GET", path, bearer(vera))
        assert status == 200, (path, body[:300])
    cookie = session_of(site, vera)
    status, _, body = call(site, "GET", "/", cookie)
    assert status == 200 and b"app@1.0" in body

    before = h.instruction(site.job(job_id), "dp1")["state"]
    for headers in (bearer(vera), {**cookie, "X-Packdist-Action": "1"}):
        for action in ("cancel", "retry"):
            status, _, body = call(site, "POST", f"/api/jobs/{job_id}/{action}", headers)
            assert status == 403, body
            error = json.loads(body)["error"]
            assert "operator vera has role viewer" in error and "needs role operator" in error

    job = site.job(job_id)
    assert job["state"] == "active"
    assert h.instruction(job, "dp1")["state"] in (before, "pending", "sending", "retrying")
    kinds = [e["kind"] for e in events_of(site, job_id)]
    assert "cancelled" not in kinds and "retry" not in kinds


def test_an_operators_cancel_and_retry_over_the_api_are_events_naming_that_operator(
    stalled: tuple[h.Site, str],
) -> None:
    site, job_id = stalled
    olga = add_operator(site, "olga", "operator")
    status, _, body = call(site, "POST", f"/api/jobs/{job_id}/cancel", bearer(olga))
    assert status == 200, body
    assert json.loads(body) == {"job": job_id, "cancelled": 1, "by": "olga"}
    job = site.job(job_id)
    assert job["state"] == "cancelled" and h.instruction(job, "dp1")["state"] == "cancelled"

    cookie = session_of(site, olga)
    status, _, body = call(site, "POST", f"/api/jobs/{job_id}/retry", cookie)
    assert status == 403 and "X-Packdist-Action" in json.loads(body)["error"]
    forged = {**cookie, "X-Packdist-Action": "1", "Origin": "https://evil.example"}
    status, _, _ = call(site, "POST", f"/api/jobs/{job_id}/retry", forged)
    assert status == 403
    assert site.job(job_id)["state"] == "cancelled"  # neither changed anything

    status, _, body = call(
        site, "POST", f"/api/jobs/{job_id}/retry", {**cookie, "X-Packdist-Action": "1"}
    )
    assert status == 200, body
    assert json.loads(body) == {"job": job_id, "queued": 1, "by": "olga"}
    assert site.job(job_id)["state"] == "active"

    by_kind = {e["kind"]: e for e in events_of(site, job_id)}
    assert by_kind["cancelled"]["by"] == "olga" and "by olga" in by_kind["cancelled"]["message"]
    assert by_kind["retry"]["by"] == "olga"
    status, _, body = call(site, "POST", "/api/jobs/nosuchjob/cancel", bearer(olga))
    assert status == 404, body


def test_a_removed_operators_session_and_credential_are_refused_and_a_reset_ends_the_old(
    stalled: tuple[h.Site, str],
) -> None:
    site, job_id = stalled
    rita = add_operator(site, "rita", "operator")
    sam = add_operator(site, "sam", "admin")
    rita_cookie, sam_cookie = session_of(site, rita), session_of(site, sam)
    # each from an address of its own: the limit per address is not what this is about
    overview = "/api/overview"
    assert call(site, "GET", overview, rita_cookie, source="127.0.0.3")[0] == 200
    assert call(site, "GET", overview, bearer(rita), source="127.0.0.3")[0] == 200

    site.cli("operator", "remove", "rita")
    assert call(site, "GET", overview, rita_cookie, source="127.0.0.3")[0] == 401
    assert call(site, "GET", overview, bearer(rita), source="127.0.0.3")[0] == 401
    cancel = f"/api/jobs/{job_id}/cancel"
    assert call(site, "POST", cancel, bearer(rita), source="127.0.0.3")[0] == 401
    assert login(site, rita, source="127.0.0.3")[0] == 401
    assert site.job(job_id)["state"] == "active"
    assert call(site, "GET", overview, sam_cookie, source="127.0.0.4")[0] == 200  # others stay

    doc = site.json("operator", "reset", "sam")
    assert doc["role"] == "admin" and doc["password"] != sam
    assert call(site, "GET", overview, sam_cookie, source="127.0.0.4")[0] == 401
    assert call(site, "GET", overview, bearer(sam), source="127.0.0.4")[0] == 401
    assert call(site, "GET", overview, bearer(doc["password"]), source="127.0.0.4")[0] == 200
    assert call(site, "GET", overview, bearer(site.operator_password), source="127.0.0.5")[0] == 200


def test_a_guesser_spraying_operator_names_from_one_address_is_rate_limited(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path)
    try:
        site.start()
        statuses = []
        for i in range(15):  # each wrong login waits a second: the bucket refills a little
            status, headers, body = login(site, f"pdo_guess{i}_{'A' * 24}")
            statuses.append(status)
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
                assert b"too many password attempts from" in body
                break
        assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
        # the right credential is refused too while the address is over its limit ...
        assert login(site, site.operator_password)[0] == 429
        # ... and another address still logs in
        assert login(site, site.operator_password, source="127.0.0.2")[0] == 303
    finally:
        site.close()


def test_guessers_at_one_name_from_many_addresses_share_one_limit(tmp_path: Path) -> None:
    site = h.make_site(tmp_path)
    try:
        site.start()
        statuses = []
        for i in range(8):  # bearers: no delay for a wrong one, the gate alone answers
            guess = bearer(f"pdo_admin_{'B' * 23}{i}")
            status, _, body = call(site, "GET", "/metrics", guess, source=f"127.0.0.{10 + i}")
            statuses.append(status)
            if status == 429:
                assert b"too many password attempts for operator admin" in body
        assert statuses[:5] == [401] * 5 and 429 in statuses, statuses
        # another operator's name is not held back by the guesses at admin
        viewer = add_operator(site, "vic", "viewer")
        assert call(site, "GET", "/metrics", bearer(viewer), source="127.0.0.30")[0] == 200
    finally:
        site.close()
