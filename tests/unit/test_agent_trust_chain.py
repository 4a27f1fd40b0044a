"""The trust chain as an agent sees it: manifests signed by a site above its own are
installed; credentials signed by one are refused; the keys are kept in the enrollment file
and taken from the site's answers, a malformed list changing nothing.

The packages of ``test_agent_home`` are signed with its ``KEY``: here the parent's key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from packdist.agent.home import ENROLLMENT, AgentHome
from packdist.agent.installer import InstallState
from packdist.agent.server import Agent
from packdist.agent.signers import TrustedSigners
from packdist.auth import PEER_CHUNKS_PATH, peer_assertion, site_assertion
from packdist.core.manifest import SignedManifest
from packdist.core.signing import SigningKey
from packdist.errors import BadSignature, ConnectError, UserError
from packdist.protocol.messages import InstallRequest
from packdist.protocol.pace import MAX_TRUSTED_KEYS, trusted_keys_of
from tests.unit.test_agent_home import KEY as PARENT
from tests.unit.test_agent_home import Package, serve, v

SITE = SigningKey.generate()  # the agent's own site, a child of PARENT's
GRANDPARENT = SigningKey.generate()
STRANGER = SigningKey.generate()  # in no chain of this agent's


def _enrolled(home: AgentHome, trusted: list[str] | None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "site_url": "http://site:8700",
        "server": "dp1",
        "site": "child",
        "site_public_key": SITE.public.hex,
    }
    if trusted is not None:
        facts["trusted_keys"] = trusted
    home.save_enrollment(facts)
    return facts


@pytest.fixture
def home(tmp_path: Path) -> AgentHome:
    h = AgentHome(tmp_path / "agent")
    h.prepare()
    return h


def _agent_trusting_parent(home: AgentHome) -> Agent:
    _enrolled(home, [GRANDPARENT.public.hex, PARENT.public.hex])
    return Agent(home, "http://site:8700", "pdt_unused")


async def _post(
    agent: Agent, path: str, body: dict[str, Any], credential: str
) -> tuple[int, dict[str, Any]]:
    """One request to the agent's HTTP API, as a site would make it."""
    runner = web.AppRunner(agent.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{port}{path}",
                json=body,
                headers={"Authorization": f"Bearer {credential}"},
            ) as resp,
        ):
            return resp.status, await resp.json()
    finally:
        await runner.cleanup()


def _install_over_http(agent: Agent, signed: SignedManifest, pkg: Package) -> tuple[int, Any]:
    agent.installer._fetch = serve(pkg)  # the chunks, as the site would stream them
    body = InstallRequest(signed.manifest.canonical(), signed.signature).to_json()

    async def main() -> tuple[int, Any]:
        status, answer = await _post(
            agent, "/v1/install", body, site_assertion(SITE, "dp1", "POST", "/v1/install")
        )
        for inst in agent.installer.installs.values():
            await inst.finished.wait()
        return status, answer

    return asyncio.run(main())


# --- manifests ----------------------------------------------------------------------------


def test_a_manifest_signed_by_the_parent_site_is_installed(home: AgentHome) -> None:
    agent = _agent_trusting_parent(home)
    pkg = v(1)  # signed by PARENT
    status, answer = _install_over_http(agent, pkg.signed, pkg)
    assert status == 202, answer
    assert agent.installer.installs[pkg.id].state is InstallState.INSTALLED
    assert home.installed() == {"app@1": pkg.id}


def test_a_manifest_signed_by_the_agents_own_site_is_still_installed(home: AgentHome) -> None:
    agent = _agent_trusting_parent(home)
    pkg = v(2)
    status, answer = _install_over_http(agent, SignedManifest.sign(pkg.manifest, SITE), pkg)
    assert status == 202, answer
    assert home.installed() == {"app@1": pkg.id}


def test_a_manifest_signed_by_a_key_outside_the_chain_is_refused(home: AgentHome) -> None:
    agent = _agent_trusting_parent(home)
    pkg = v(3)
    status, answer = _install_over_http(agent, SignedManifest.sign(pkg.manifest, STRANGER), pkg)
    assert status == 400
    assert (
        answer["error"] == "install refused: manifest signature does not verify with the site key"
    )
    assert home.installed() == {} and not agent.installer.installs


def test_a_parents_manifest_is_refused_by_an_agent_whose_site_names_no_parent(
    home: AgentHome,
) -> None:
    _enrolled(home, None)  # an enrollment file older than the trust chain
    agent = Agent(home, "http://site:8700", "pdt_unused")
    pkg = v(4)
    status, _ = _install_over_http(agent, pkg.signed, pkg)
    assert status == 400 and home.installed() == {}


def test_the_one_manifest_check_refuses_a_signature_over_other_bytes() -> None:
    signers = TrustedSigners.of(SITE.public, (PARENT.public.hex,))
    pkg = v(5)
    other = v(6).manifest.canonical()
    assert signers.verify_manifest(pkg.manifest.canonical(), pkg.signed.signature) == pkg.manifest
    with pytest.raises(BadSignature, match="does not verify with the site key"):
        signers.verify_manifest(other, pkg.signed.signature)


# --- credentials: the site's own key alone ------------------------------------------------


def test_a_site_credential_signed_by_the_parents_key_is_refused(home: AgentHome) -> None:
    agent = _agent_trusting_parent(home)
    pkg = v(7)
    body = InstallRequest(pkg.manifest.canonical(), pkg.signed.signature).to_json()
    for key in (PARENT, GRANDPARENT):
        forged = site_assertion(key, "dp1", "POST", "/v1/install")
        status, answer = asyncio.run(_post(agent, "/v1/install", body, forged))
        assert (status, answer["error"]) == (401, "credential refused")
    assert not agent.installer.installs


def test_a_peer_credential_signed_by_the_parents_key_is_refused(home: AgentHome) -> None:
    agent = _agent_trusting_parent(home)
    forged = peer_assertion(PARENT, "dp2", "ab" * 32)
    status, answer = asyncio.run(
        _post(agent, PEER_CHUNKS_PATH, {"package_id": "ab" * 32, "digests": []}, forged)
    )
    assert (status, answer["error"]) == (401, "credential refused")


# --- the keys kept, and taken from the site's answers -------------------------------------


def test_trusted_keys_survive_a_restart_in_the_enrollment_file(home: AgentHome) -> None:
    _enrolled(home, None)
    agent = Agent(home, "http://site:8700", "pdt_unused")
    assert agent.signers is not None and agent.signers.above == ()  # an old file: none
    above = [PARENT.public.hex, GRANDPARENT.public.hex]
    agent.link.take_trusted_keys({"interval": 2, "trusted_keys": [k.upper() for k in above]})
    assert json.loads((home.root / ENROLLMENT).read_bytes())["trusted_keys"] == above
    restarted = Agent(home, "http://site:8700", "pdt_unused")
    assert restarted.signers is not None
    assert restarted.signers.above_hex == tuple(above)
    assert restarted.site_key is not None and restarted.site_key.hex == SITE.public.hex


def test_a_heartbeat_answer_without_trusted_keys_changes_nothing(home: AgentHome) -> None:
    agent = _agent_trusting_parent(home)
    before = (home.root / ENROLLMENT).read_bytes()
    agent.link.take_trusted_keys({"interval": 2, "revoked": []})
    assert agent.signers is not None and len(agent.signers.above) == 2
    assert (home.root / ENROLLMENT).read_bytes() == before


def test_an_empty_list_in_a_heartbeat_answer_drops_the_parents(home: AgentHome) -> None:
    agent = _agent_trusting_parent(home)
    agent.link.take_trusted_keys({"trusted_keys": []})
    assert agent.signers is not None and agent.signers.above == ()
    assert json.loads((home.root / ENROLLMENT).read_bytes())["trusted_keys"] == []


@pytest.mark.parametrize(
    "said",
    [
        pytest.param("ab" * 32, id="not-a-list"),
        pytest.param({"key": "ab" * 32}, id="an-object"),
        pytest.param(["not hex"], id="not-hex"),
        pytest.param(["ab" * 31], id="too-short"),
        pytest.param([7], id="not-text"),
        pytest.param([STRANGER.public.hex, None], id="one-bad-among-good"),
        pytest.param(
            [SigningKey.generate().public.hex for _ in range(MAX_TRUSTED_KEYS + 1)],
            id="too-many",
        ),
    ],
)
def test_malformed_trusted_keys_in_an_answer_are_ignored_with_one_warning(
    home: AgentHome, said: object, caplog: pytest.LogCaptureFixture
) -> None:
    agent = _agent_trusting_parent(home)
    before = (home.root / ENROLLMENT).read_bytes()
    signers = agent.signers
    with caplog.at_level(logging.WARNING, logger="packdist.agent"):
        agent.link.take_trusted_keys({"interval": 2, "trusted_keys": said})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "trusted_keys" in warnings[0].getMessage()
    assert agent.signers == signers
    assert (home.root / ENROLLMENT).read_bytes() == before


def test_the_keys_an_answer_names_are_read_each_once_in_order() -> None:
    a, b = PARENT.public.hex, GRANDPARENT.public.hex
    assert trusted_keys_of({"trusted_keys": [a, b.upper(), a]}) == (a, b)
    assert trusted_keys_of({}) is None and trusted_keys_of({"trusted_keys": None}) is None
    assert trusted_keys_of({"trusted_keys": []}) == ()


def test_a_corrupt_trusted_key_in_the_enrollment_file_is_a_one_line_error(
    home: AgentHome,
) -> None:
    for bad in (["zz"], "ab" * 32):
        _enrolled(home, bad)  # type: ignore[arg-type]
        with pytest.raises(UserError, match="corrupt enrollment file") as caught:
            Agent(home, "http://site:8700", "pdt_unused")
        assert "\n" not in caught.value.message


class _ChildSite:
    """The hello a child site answers (over plain HTTP: no authority to pin), and no
    certificate (the agent works without one, and asks again later)."""

    urls = ("http://site:8700",)
    base_url = "http://site:8700"

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    def say_who(self, server: str | None, port: int | None) -> None:
        """What the agent says of itself with each request (for a refusal's sake)."""

    async def hello(self) -> dict[str, Any]:
        return {"server": "dp1", "site": "child", "site_public_key": SITE.public.hex, **self.answer}

    async def certificate(self, request: object) -> Any:
        raise ConnectError("no certificates in this test")


def _enroll(home: AgentHome, answer: dict[str, Any]) -> Agent:
    agent = Agent(home, "http://site:8700", "pdt_unused", plain_http=True)
    agent.link.site = _ChildSite(answer)  # type: ignore[assignment]
    asyncio.run(agent.link.enroll())
    return agent


def test_enrollment_takes_the_keys_the_hello_names_and_an_older_site_names_none(
    home: AgentHome,
) -> None:
    above = [PARENT.public.hex]
    agent = _enroll(home, {"trusted_keys": above})
    assert agent.signers is not None and agent.signers.above_hex == tuple(above)
    assert json.loads((home.root / ENROLLMENT).read_bytes())["trusted_keys"] == above
    malformed = _enroll(home, {"trusted_keys": ["zz"]})  # kept as they were
    assert malformed.signers is not None and malformed.signers.above_hex == tuple(above)
    older = _enroll(home, {})  # a site older than the chain: none
    assert older.signers is not None and older.signers.above == ()
    assert json.loads((home.root / ENROLLMENT).read_bytes())["trusted_keys"] == []
