"""Schedule windows: when a link may carry packages (``site add-child --window``).

A window is days and hours in a time zone: ``Mon-Fri 18:00-07:00``, ``Sat,Sun 00:00-24:00``,
``daily 22:00-05:30``. A window whose end is before its start runs past midnight and belongs
to the day it starts on (``Fri 18:00-07:00`` is open from Friday evening to Saturday
morning). A link with no window is always open; with several, it is open inside any.

Times are wall-clock times of the window's time zone (``zoneinfo``), so a window keeps its
hours across daylight-saving changes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from packdist.errors import UserError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?P<days>[A-Za-z,\-]+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s*$"
)
STEP = dt.timedelta(minutes=1)  # the grain of windows: the next opening is found to the minute
HORIZON = 8 * 24 * 60  # minutes looked ahead for the next opening (a week, and a day)


def _minutes(text: str, what: str) -> int:
    hours, minutes = (int(x) for x in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise UserError(f"window {what} {text!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    words = text.lower()
    if words in ("daily", "every", "all"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in words.split(","):
        first, dash, last = part.partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            raise UserError(f"window days {text!r}: use Mon..Sun, ranges (Mon-Fri), or daily")
        a, b = DAYS.index(first), DAYS.index(last if dash else first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight; <= start: the next day

    @classmethod
    def parse(cls, text: str) -> Window:
        found = _WINDOW.match(text)
        if found is None:
            raise UserError(
                f"window {text!r}: write it as DAYS HH:MM-HH:MM, e.g. Mon-Fri 18:00-07:00"
            )
        start = _minutes(found["start"], "start")
        end = _minutes(found["end"], "end")
        if start == end:
            raise UserError(f"window {text!r} is empty (it starts when it ends)")
        return cls(_days(found["days"]), start, end)

    def holds(self, local: dt.datetime) -> bool:
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        return (today in self.days and minute >= self.start) or (
            (today - 1) % 7 in self.days and minute < self.end
        )

    def text(self) -> str:
        days = ",".join(DAYS[d].title() for d in sorted(self.days))
        return f"{days} {self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True)
class Schedule:
    """The windows of one link, in one time zone; none: always open."""

    windows: tuple[Window, ...] = ()
    zone: str = "UTC"

    @classmethod
    def parse(cls, windows: list[str], zone: str = "UTC") -> Schedule:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UserError(f"time zone {zone!r} is not known (e.g. Europe/Berlin, UTC)") from None
        return cls(tuple(Window.parse(w) for w in windows), zone)

    def _local(self, now: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(now, ZoneInfo(self.zone))

    def is_open(self, now: float) -> bool:
        if not self.windows:
            return True
        local = self._local(now)
        return any(w.holds(local) for w in self.windows)

    def next_open(self, now: float) -> float | None:
        """When the link opens next (``now`` if it is open); None if it never does."""
        if self.is_open(now):
            return now
        local = self._local(now).replace(second=0, microsecond=0)
        for _ in range(HORIZON):
            local = (local + STEP).astimezone(ZoneInfo(self.zone))
            if any(w.holds(local) for w in self.windows):
                return local.timestamp()
        return None

    def closed_words(self, now: float) -> str | None:
        """None while open; else "waiting for window, opens Tue 18:00 (Europe/Berlin)"."""
        if self.is_open(now):
            return None
        opens = self.next_open(now)
        if opens is None:
            return "waiting for window, which never opens"
        when = self._local(opens).strftime("%a %H:%M")
        return f"waiting for window, opens {when} ({self.zone})"

    def to_json(self) -> str:
        """As a child site's row keeps it."""
        if not self.windows:
            return "{}"
        return json.dumps({"windows": [w.text() for w in self.windows], "zone": self.zone})

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """What :meth:`to_json` wrote; always open for a row with none (or a damaged one:
        a row is written only by :meth:`to_json`)."""
        try:
            doc = json.loads(text or "{}")
            return cls.parse(list(doc.get("windows", [])), str(doc.get("zone", "UTC")))
        except (ValueError, UserError, AttributeError, TypeError):
            return cls()

    def text(self) -> str:
        if not self.windows:
            return "always"
        return "; ".join(w.text() for w in self.windows) + f" ({self.zone})"
