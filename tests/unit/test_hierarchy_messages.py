"""What a child site reports to its parent is checked as it is read: a malformed report is
one line naming the problem (a 400), never a 500, and never half taken."""

from __future__ import annotations

from typing import Any

import pytest

from packdist.core.names import MAX_DEPTH, check_reported_name
from packdist.errors import UserError
from packdist.protocol.hierarchy import ChildReport, ReportAnswer, ReportedServer

PKG = "ab" * 32


def _server(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "dp1",
        "online": True,
        "seen_ago": 1.5,
        "disk_free": 10,
        "installed": [PKG],
    }
    doc.update(over)
    return doc


def test_a_report_survives_its_round_trip() -> None:
    report = ChildReport(
        "branch",
        (
            ReportedServer("dp1", True, 1.5, 10, (PKG,)),
            ReportedServer("gc/dp2", False, None, None, ()),
        ),
    )
    assert ChildReport.from_json(report.to_json()) == report


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "child report must be a JSON object"),
        ({"servers": []}, "child report site must be the child's name"),
        ({"site": "b", "servers": {}}, "child report servers must be a list"),
        ({"site": "b", "servers": [1]}, "each reported server must be a JSON object"),
        ({"site": "b", "servers": [_server(online="yes")]}, "online must be true or false"),
        ({"site": "b", "servers": [_server(seen_ago="1")]}, "seen_ago must be a number"),
        ({"site": "b", "servers": [_server(seen_ago=float("nan"))]}, "seen_ago must be a number"),
        ({"site": "b", "servers": [_server(disk_free=-1)]}, "disk_free must be a non-negative"),
        ({"site": "b", "servers": [_server(installed=["x"])]}, "list of package ids"),
        ({"site": "b", "servers": [_server(), _server()]}, "names a server twice"),
        ({"site": "b", "servers": [_server(name="../dp1")]}, "server name"),
        ({"site": "b", "servers": [_server(name="a//b")]}, "server name"),
    ],
)
def test_a_malformed_report_is_refused_in_words(body: Any, words: str) -> None:
    with pytest.raises(UserError, match=words):
        ChildReport.from_json(body)


def test_a_reported_name_has_at_most_max_depth_levels_of_sites() -> None:
    assert check_reported_name("a/b/dp1") == "a/b/dp1"
    with pytest.raises(UserError, match=f"more than {MAX_DEPTH} levels"):
        check_reported_name("/".join(["s"] * (MAX_DEPTH + 1)))


def test_a_time_in_the_future_counts_as_just_now() -> None:
    (s,) = ChildReport.from_json({"site": "b", "servers": [_server(seen_ago=-30)]}).servers
    assert s.seen_ago == 0.0


def test_the_parent_cannot_make_a_child_report_too_often_or_never() -> None:
    assert ReportAnswer.from_json({"parent": "hq", "interval": 0}).interval == 1.0
    assert ReportAnswer.from_json({"parent": "hq", "interval": 1e9}).interval == 60.0
    with pytest.raises(UserError, match="interval"):
        ReportAnswer.from_json({"parent": "hq", "interval": True})
