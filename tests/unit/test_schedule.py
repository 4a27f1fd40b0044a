"""Schedule windows of a link to a child site: when it is open, when it opens next, and the
words an operator reads."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packdist.core.schedule import Schedule, Window
from packdist.errors import UserError

BERLIN = "Europe/Berlin"


def _at(day: int, hour: int, minute: int = 0, zone: str = BERLIN) -> float:
    """A time in December 2026: day 7 is a Monday."""
    from zoneinfo import ZoneInfo

    return dt.datetime(2026, 12, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def test_a_window_past_midnight_belongs_to_the_day_it_starts_on() -> None:
    s = Schedule.parse(["Mon-Fri 18:00-07:00"], BERLIN)
    assert s.is_open(_at(11, 23))  # Friday night
    assert s.is_open(_at(12, 6, 59))  # Saturday morning, still Friday's window
    assert not s.is_open(_at(12, 7))
    assert not s.is_open(_at(13, 6))  # Sunday morning: Saturday has no window
    assert not s.is_open(_at(7, 6))  # Monday morning: Sunday has none either
    assert s.is_open(_at(8, 6))  # Tuesday morning: Monday's


def test_the_words_say_when_it_opens_in_the_windows_time_zone() -> None:
    s = Schedule.parse(["Tue 18:00-20:00"], BERLIN)
    assert s.closed_words(_at(8, 12)) == "waiting for window, opens Tue 18:00 (Europe/Berlin)"
    assert s.closed_words(_at(8, 19)) is None
    assert s.next_open(_at(8, 21)) == _at(15, 18)


def test_no_window_is_always_open_and_round_trips() -> None:
    always = Schedule()
    assert always.is_open(_at(9, 3)) and always.text() == "always"
    s = Schedule.parse(["daily 22:00-05:30", "Sat,Sun 00:00-24:00"], BERLIN)
    assert Schedule.from_json(s.to_json()) == s
    assert Schedule.from_json(always.to_json()) == always


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Mon-Fri", "write it as DAYS HH:MM-HH:MM"),
        ("Moonday 10:00-11:00", "window days"),
        ("Mon 25:00-26:00", "not a time of day"),
        ("Mon 10:00-10:00", "is empty"),
    ],
)
def test_a_bad_window_is_refused_in_words(text: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        Window.parse(text)


def test_an_unknown_time_zone_is_refused_in_words() -> None:
    with pytest.raises(UserError, match="time zone 'Mars/Olympus' is not known"):
        Schedule.parse(["Mon 10:00-11:00"], "Mars/Olympus")


@settings(max_examples=60, deadline=None)
@given(
    day=st.integers(0, 6),
    start=st.integers(0, 23 * 60),
    length=st.integers(1, 23 * 60),
    now=st.floats(_at(1, 0, zone="UTC"), _at(28, 0, zone="UTC")),
)
def test_the_next_opening_is_open_and_no_minute_before_it_is(
    day: int, start: int, length: int, now: float
) -> None:
    end = (start + length) % (24 * 60)
    if end == start:
        return
    names = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    s = Schedule.parse(
        [f"{names[day]} {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"], "UTC"
    )
    opens = s.next_open(now)
    assert opens is not None and s.is_open(opens)
    if opens > now:  # closed until then, minute by minute
        t = opens - 60
        while t > now:
            assert not s.is_open(t)
            t -= 60
