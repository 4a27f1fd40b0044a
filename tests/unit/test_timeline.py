"""The dashboard's timeline folds a server's repeated same-cause failures into one line, and
keeps everything else as it happened."""

from __future__ import annotations

from typing import Any

from packdist.site.timeline import cause_of, collapse, events_block

CAUSE = "connect timeout to https://10.0.0.12:8700"


def _event(n: int, kind: str, message: str, server: str | None = "dp3") -> dict[str, Any]:
    return {
        "id": n, "at": f"2026-12-02T10:00:{n:02d}Z", "time": 1000.0 + n, "kind": kind,
        "job": "j1", "server": server, "message": message, "by": None,
    }  # fmt: skip


def _retries(start: int, count: int, cause: str = CAUSE) -> list[dict[str, Any]]:
    events = []
    for k in range(count):
        events.append(_event(start + 2 * k, "attempt", f"attempt {k + 1} to dp3"))
        events.append(_event(start + 2 * k + 1, "failure", f"{cause}; retry in {2**k:.1f}s"))
    return events


def test_a_run_of_the_same_failure_is_one_line_with_how_many_more() -> None:
    events = [_event(1, "created", "job created", server=None), *_retries(2, 7)]
    shown = collapse(events)
    assert [e["kind"] for e in shown] == ["created", "attempt", "failure"]
    newest = shown[2]
    assert (newest["repeated"], newest["time"], newest["first_time"]) == (6, 1015.0, 1003.0)
    assert newest["message"] == f"{CAUSE}; retry in 64.0s"  # the newest plan
    html = events_block(events, now=1063.0)
    assert "6 earlier attempts failed the same way, the first 60s ago" in html


def test_a_new_cause_or_an_install_ends_the_run() -> None:
    events = [
        *_retries(1, 3),
        *_retries(10, 2, cause="dp3 refused the credential"),
        _event(20, "attempt", "attempt 6 to dp3"),
        _event(21, "installed", "installed on dp3"),
    ]
    shown = collapse(events)
    assert [(e["kind"], e.get("repeated", 0)) for e in shown] == [
        ("attempt", 0), ("failure", 2),  # attempts 1-3: one line
        ("attempt", 0), ("failure", 1),  # attempt 4 met another cause: a new line
        ("attempt", 0), ("installed", 0),
    ]  # fmt: skip


def test_other_servers_events_in_between_do_not_break_a_run_or_get_folded() -> None:
    events = _retries(1, 3)
    events.insert(3, _event(50, "installed", "installed on dp1", server="dp1"))
    events.sort(key=lambda e: e["id"])
    shown = collapse(events)
    assert sum(1 for e in shown if e["server"] == "dp1") == 1
    assert [e.get("repeated") for e in shown if e["kind"] == "failure"] == [2]


def test_the_cause_is_the_failure_without_its_retry_plan() -> None:
    assert cause_of(f"{CAUSE}; retry in 4.0s") == CAUSE
    assert cause_of(f"{CAUSE}; server came back during the attempt: retry now") == CAUSE
    assert cause_of("a; b; c") == "a; b; c"
