"""Site credentials: bound to one server, one method and one path, alive 30 seconds.

First the functions themselves, then the agent's HTTP server refusing a credential that was
made for another request.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from packdist.agent.home import AgentHome
from packdist.agent.server import Agent
from packdist.auth import (
    ASSERTION_TTL,
    CLOCK_SKEW,
    check_site_assertion,
    hash_token,
    looks_like_token,
    new_token,
    request_path,
    site_assertion,
    token_fingerprint,
    token_secret,
)
from packdist.core.signing import SigningKey
from packdist.errors import AuthError

KEY = SigningKey.generate()
NOW = 1_700_000_000.0


def _token(method: str = "POST", path: str = "/v1/install", aud: str = "dp1") -> str:
    return site_assertion(KEY, aud, method, path, now=NOW)


def test_a_credential_is_accepted_for_the_request_it_was_made_for() -> None:
    check_site_assertion(_token(), KEY.public, "dp1", "POST", "/v1/install", now=NOW)
    check_site_assertion(_token(), KEY.public, "dp1", "post", "/v1/install", now=NOW + 29)


def test_the_query_is_not_part_of_the_path() -> None:
    token = _token("GET", "http://10.0.0.12:8701/v1/installs/abc?wait=5")
    check_site_assertion(token, KEY.public, "dp1", "GET", "/v1/installs/abc", now=NOW)
    check_site_assertion(token, KEY.public, "dp1", "GET", "/v1/installs/abc?wait=0", now=NOW)
    assert request_path("http://h:1/a/b?c=d#e") == "/a/b"
    assert request_path("/a/b?c=d") == "/a/b"


@pytest.mark.parametrize(
    ("method", "path", "aud", "now", "words"),
    [
        pytest.param("GET", "/v1/install", "dp1", NOW, "GET", id="wrong-method"),
        pytest.param("POST", "/v1/installs/x", "dp1", NOW, "path", id="wrong-path"),
        pytest.param("POST", "/v1/install/", "dp1", NOW, "path", id="trailing-slash"),
        pytest.param("POST", "/v1/install", "dp2", NOW, "another server", id="wrong-audience"),
        pytest.param("POST", "/v1/install", "dp1", NOW + 31, "expired", id="expired"),
        pytest.param("POST", "/v1/install", "dp1", NOW - 61, "expired", id="from-the-future"),
    ],
)
def test_a_credential_for_another_request_is_refused(
    method: str, path: str, aud: str, now: float, words: str
) -> None:
    with pytest.raises(AuthError, match=words):
        check_site_assertion(_token(), KEY.public, aud, method, path, now=now)


def test_credentials_live_thirty_seconds_with_a_minute_of_clock_skew() -> None:
    assert ASSERTION_TTL == 30.0
    assert CLOCK_SKEW == 60.0
    token = _token()
    check_site_assertion(token, KEY.public, "dp1", "POST", "/v1/install", now=NOW + 30)
    check_site_assertion(token, KEY.public, "dp1", "POST", "/v1/install", now=NOW - 60)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tampered_claims(**changes: object) -> str:
    """The site's signature over one set of claims, presented with other claims."""
    payload_b64, sig_b64 = _token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    claims.update(changes)
    forged = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    return f"{_b64(forged)}.{sig_b64}"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(_tampered_claims(htu="/v1/installs/x"), id="path-rewritten"),
        pytest.param(_tampered_claims(exp=NOW + 10_000), id="life-extended"),
        pytest.param(
            _token()[:-4] + ("AAAA" if not _token().endswith("AAAA") else "BBBB"), id="sig"
        ),
        pytest.param(
            site_assertion(SigningKey.generate(), "dp1", "POST", "/v1/install", NOW), id="key"
        ),
        pytest.param("not-a-credential", id="garbage"),
        pytest.param("a.b", id="not-base64-json"),
    ],
)
def test_a_tampered_or_foreign_credential_is_refused(token: str) -> None:
    with pytest.raises(AuthError, match="credential refused"):
        check_site_assertion(token, KEY.public, "dp1", "POST", "/v1/installs/x", now=NOW)


# --- the agent checks the actual request -------------------------------------------------


def test_the_agent_refuses_a_credential_made_for_another_request(tmp_path: Path) -> None:
    home = AgentHome(tmp_path / "agent")
    home.prepare()
    home.save_enrollment(
        {
            "site_url": "http://site:8700",
            "server": "dp1",
            "site": "s",
            "site_public_key": KEY.public.hex,
        }
    )
    agent = Agent(home, "http://site:8700", "pdt_unused")

    async def main() -> dict[str, int]:
        runner = web.AppRunner(agent.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        status_url = f"{base}/v1/installs/{'a' * 64}?wait=0"

        def auth(method: str, url: str, aud: str = "dp1") -> dict[str, str]:
            return {"Authorization": f"Bearer {site_assertion(KEY, aud, method, url)}"}

        out: dict[str, int] = {}
        try:
            async with aiohttp.ClientSession() as s:
                cases = {
                    "right": ("GET", status_url, auth("GET", status_url)),
                    "other-path": (
                        "GET",
                        status_url,
                        auth("GET", f"{base}/v1/installs/{'b' * 64}"),
                    ),
                    "other-method": (
                        "POST",
                        f"{base}/v1/install",
                        auth("GET", f"{base}/v1/install"),
                    ),
                    "other-server": ("GET", status_url, auth("GET", status_url, aud="dp2")),
                    "none": ("GET", status_url, {}),
                }
                for name, (method, url, headers) in cases.items():
                    async with s.request(method, url, headers=headers) as resp:
                        out[name] = resp.status
        finally:
            await runner.cleanup()
        return out

    got = asyncio.run(main())
    assert got == {
        "right": 404,  # accepted: this agent just has no such install
        "other-path": 401,
        "other-method": 401,
        "other-server": 401,
        "none": 401,
    }


def test_a_token_carries_the_sites_fingerprint_and_only_its_secret_is_a_credential() -> None:
    fingerprint = "sha256:" + "A" * 43
    token = new_token(fingerprint)
    assert looks_like_token(token) and token_fingerprint(token) == fingerprint
    secret = token_secret(token)
    assert looks_like_token(secret) and token_fingerprint(secret) is None
    assert hash_token(token) == hash_token(secret), "the site took the two forms apart"
    for bad in (secret + ".", secret + ".short", secret + "." + "A" * 44, token + ".x"):
        assert not looks_like_token(bad) and token_fingerprint(bad) is None, bad
    with pytest.raises(ValueError):
        new_token("md5:" + "A" * 43)
