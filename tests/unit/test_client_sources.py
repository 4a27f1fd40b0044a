"""Clients, the parts without disk or network: which sources a client is offered and in
what order, what its credential lets it do, and the messages it exchanges with its site."""

from __future__ import annotations

import pytest

from packdist.auth import (
    ANY_PEER,
    CLIENT_ROLE,
    PEER_CHUNKS_PATH,
    check_site_assertion,
    client_assertion,
    peer_assertion,
)
from packdist.core.signing import SigningKey
from packdist.errors import AuthError, UserError
from packdist.protocol.client_api import FetchReport, Source, SourcesAnswer, SourcesRequest
from packdist.service.clients import MAX_OFFERED, order_sources, report_words
from packdist.store.records import SwarmMember

NOW = 1_700_000_000.0
ALIVE = 10.0
KEY = SigningKey.generate()


def member(name: str, site: str | None, holder: bool = True, seen: float = NOW - 1) -> SwarmMember:
    labels = (("site", site),) if site else ()
    return SwarmMember(name, f"https://{name}:8701", labels, seen, holder)


def names(sources: list[Source]) -> list[str]:
    return [s.name for s in sources]


def test_servers_at_the_clients_location_come_first_then_the_others() -> None:
    members = [member("dp1", "b"), member("dp2", "a"), member("dp3", None), member("dp4", "a")]
    got = names(order_sources(members, "a", "site", NOW, ALIVE, seed="c1"))
    assert sorted(got[:2]) == ["dp2", "dp4"] and sorted(got[2:]) == ["dp1", "dp3"]


def test_a_client_without_a_location_gets_every_holder_as_far() -> None:
    members = [member("dp1", "a"), member("dp2", "b")]
    assert sorted(names(order_sources(members, None, "site", NOW, ALIVE))) == ["dp1", "dp2"]


def test_receivers_and_silent_servers_are_not_offered() -> None:
    members = [
        member("dp1", "a", holder=False),
        member("dp2", "a", seen=NOW - 60),
        member("dp3", "a", seen=0.0),
        member("dp4", "b"),
    ]
    assert names(order_sources(members, "a", "site", NOW, ALIVE)) == ["dp4"]


def test_the_sites_fresher_word_on_a_server_counts() -> None:
    members = [member("dp1", "a", seen=NOW - 60)]
    heard = {"dp1": NOW - 2}.get
    assert names(order_sources(members, "a", "site", NOW, ALIVE, heard)) == ["dp1"]


def test_the_order_is_the_same_for_one_client_and_spreads_over_clients() -> None:
    members = [member(f"dp{i}", "a") for i in range(6)]
    once = names(order_sources(members, "a", "site", NOW, ALIVE, seed="c1"))
    assert once == names(order_sources(list(reversed(members)), "a", "site", NOW, ALIVE, seed="c1"))
    firsts = {
        names(order_sources(members, "a", "site", NOW, ALIVE, seed=f"c{i}"))[0] for i in range(40)
    }
    assert len(firsts) > 2


def test_at_most_a_few_sources_are_offered_the_near_ones_kept() -> None:
    members = [member(f"far{i}", "b") for i in range(20)] + [member("near", "a")]
    got = names(order_sources(members, "a", "site", NOW, ALIVE))
    assert len(got) == MAX_OFFERED and got[0] == "near"


def test_a_location_label_other_than_site_is_followed() -> None:
    members = [
        SwarmMember("dp1", "https://dp1:1", (("rack", "r1"),), NOW, True),
        SwarmMember("dp2", "https://dp2:1", (("rack", "r2"),), NOW, True),
    ]
    assert names(order_sources(members, "r2", "rack", NOW, ALIVE, seed="x"))[0] == "dp2"


# --- the client's credential ----------------------------------------------------------------


def test_a_client_credential_names_the_client_and_one_package_on_the_peer_route() -> None:
    token = client_assertion(KEY, "c1", "ab" * 32, NOW)
    claims = check_site_assertion(token, KEY.public, ANY_PEER, "POST", PEER_CHUNKS_PATH, NOW)
    assert (claims["sub"], claims["pkg"], claims["role"]) == ("c1", "ab" * 32, CLIENT_ROLE)
    with pytest.raises(AuthError, match="another path"):
        check_site_assertion(token, KEY.public, ANY_PEER, "POST", "/v1/install", NOW)


def test_a_servers_peer_credential_names_no_client_role() -> None:
    claims = check_site_assertion(
        peer_assertion(KEY, "dp1", "ab" * 32, NOW),
        KEY.public,
        ANY_PEER,
        "POST",
        PEER_CHUNKS_PATH,
        NOW,
    )
    assert "role" not in claims  # so the agent still asks for dp1's certificate


# --- messages -------------------------------------------------------------------------------


def test_a_sources_request_names_a_package_reference() -> None:
    assert SourcesRequest.from_json({"package": "app@2"}).ref == "app@2"
    bads: list[object] = [None, [], {}, {"package": 3}, {"package": "app"}, {"package": "a b@1"}]
    for bad in bads:
        with pytest.raises(UserError):
            SourcesRequest.from_json(bad)


def test_a_sources_answer_reads_back_as_written_and_refuses_what_is_malformed() -> None:
    answer = SourcesAnswer(
        "c1",
        "ab" * 32,
        b"{}",
        b"sig",
        KEY.public.hex,
        (Source("dp1", "https://dp1:8701", "a"),),
        "cred",
    )
    assert SourcesAnswer.from_json(answer.to_json()) == answer
    doc = answer.to_json()
    for key, value in [
        ("sources", "dp1"),
        ("sources", [{"name": "dp1", "url": "file:///etc"}]),
        ("manifest", "not base64!"),
        ("credential", None),
    ]:
        with pytest.raises(UserError):
            SourcesAnswer.from_json({**doc, key: value})


def test_a_fetch_report_takes_byte_counts_only() -> None:
    report = FetchReport("ab" * 32, {"dp1": 5, "site": 0}, 7, 1.5)
    assert FetchReport.from_json(report.to_json()) == report
    for sources in ({"dp1": -1}, {"dp1": "5"}, {"dp1": True}, ["dp1"]):
        with pytest.raises(UserError):
            FetchReport.from_json({"package_id": "ab" * 32, "sources": sources})


def test_a_fetch_in_words_names_the_largest_source_first() -> None:
    report = FetchReport("ab" * 32, {"site": 2**20, "dp1": 12 * 2**20, "dp2": 0}, 3 * 2**20)
    assert report_words("c1", "app@2", report) == (
        "client c1 fetched app@2 (12.0 MiB from dp1, 1.0 MiB from site, 3.0 MiB already here)"
    )
    assert report_words("c1", "app@2", FetchReport("x", {})) == (
        "client c1 fetched app@2 (nothing to fetch)"
    )
