"""The heartbeat interval the site names follows the fleet's size, every "offline" silence
follows the interval, and the agent's pace stays within its bounds whatever it is told."""

from __future__ import annotations

import asyncio
import random
import time

from packdist.protocol.messages import Heartbeat
from packdist.protocol.site_api import (
    DEFAULT_INTERVAL,
    MAX_INTERVAL,
    MAX_REVOKED,
    MIN_INTERVAL,
    RETRY_MAX,
    SHED_MAX,
    HeartbeatPace,
    revoked_of,
)
from packdist.site.cadence import (
    HEARTBEAT_BUDGET,
    LAG_LIMIT,
    LAG_LOOKS,
    LAG_TICK,
    RATE_BURST,
    Admission,
    Cadence,
    interval_for,
)
from packdist.site.liveness import Liveness
from packdist.site.views import online, online_after
from packdist.store.records import ServerRecord


def test_the_interval_follows_the_fleet_size_and_keeps_heartbeats_within_the_budget() -> None:
    assert interval_for(10) == 2.0
    assert interval_for(2_500) == 2.5
    assert interval_for(5_000) == 5.0
    assert interval_for(10_000) == MAX_INTERVAL  # a returning server still waits at most 10 s
    for servers in (100, 1_000, 3_000, 7_999):
        assert servers / interval_for(servers) <= max(HEARTBEAT_BUDGET, servers / 2)


def test_a_server_told_a_long_interval_is_not_offline_when_the_fleet_shrinks() -> None:
    cadence = Cadence(8_000)  # 8 s
    assert cadence.offline_after() == 3 * 8 + 1
    cadence.follow(100, now=1000.0)  # the fleet shrank: 2 s from now on
    assert cadence.interval == 2.0
    assert cadence.longest(now=1001.0) == 8.0, "agents told 8 s may still be waiting it out"
    assert cadence.longest(now=1000.0 + 3 * MAX_INTERVAL + 1) == 2.0
    live = Liveness(lambda: 3 * cadence.longest(now=1001.0) + 1)
    beat = Heartbeat("b", 1, [])
    live.recorded("dp1", beat, 0.0)
    assert live.quiet("dp1", beat, 20.0), "8 s agents 20 s apart: still a quiet heartbeat"


def test_heartbeats_beyond_the_rate_limit_and_its_burst_are_shed_and_room_comes_back() -> None:
    admission = Admission(rate_limit=3)  # 3 a second, RATE_BURST seconds' worth at once
    burst = int(3 * RATE_BURST)
    taken = [not admission.overloaded(100.0) for _ in range(burst + 2)]
    assert taken == [True] * burst + [False] * 2
    assert [not admission.overloaded(100.5) for _ in range(2)] == [True, False]  # 1.5 more
    assert all(not admission.overloaded(110.0) for _ in range(burst)), "room did not come back"
    admission.lag = 0.5  # the event loop runs late: shed, whatever the rate
    assert admission.overloaded(120.0)
    assert admission.shed == 4


def test_while_jobs_are_under_way_heartbeats_beyond_the_budget_give_way() -> None:
    moving = [False]
    admission = Admission(rate_limit=4, busy_rate_limit=2, busy=lambda: moving[0])
    full, busy = int(4 * RATE_BURST), int(2 * RATE_BURST)
    assert [not admission.overloaded(200.0) for _ in range(full + 1)] == [True] * full + [False]
    moving[0] = True  # the despooler has attempts in flight
    taken = [not admission.overloaded(300.0) for _ in range(full)]
    assert taken == [True] * busy + [False] * (full - busy)
    assert admission.shed_lately() == f"1 (rate), {full - busy} (rate, jobs under way)"


def test_a_shed_heartbeat_keeps_a_live_server_from_looking_offline() -> None:
    live = Liveness(7.0)
    beat = Heartbeat("b", 1, [])
    live.recorded("dp1", beat, 0.0)
    for t in (5.0, 10.0, 15.0):  # shed, unread, every 5 s
        live.heard("dp1", t)
    assert live.quiet("dp1", beat, 20.0), "shed heartbeats counted it offline"
    live.recorded("dp2", beat, 0.0)
    live.heard("dp2", 30.0)  # already offline when shed: its return must still count
    assert not live.quiet("dp2", beat, 31.0)
    live.recorded("dp3", beat, 0.0)
    live.heard("dp3", 5.0, told_to_wait=45.0)  # shed, told to wait 45 s: it does
    assert live.quiet("dp3", beat, 49.0), "an agent doing as told was counted offline"
    live.recorded("dp4", beat, 0.0)
    live.heard("dp4", 5.0, told_to_wait=45.0)
    assert not live.quiet("dp4", beat, 5.0 + 45.0 + 7.1), "silent beyond the wait: offline"


def test_a_failed_call_makes_the_next_heartbeat_wake_the_servers_retries_once() -> None:
    live = Liveness(7.0)
    beat = Heartbeat("b", 1, [])
    live.recorded("dp1", beat, 0.0)
    live.unreached("dp1")
    assert not live.quiet("dp1", beat, 2.0), "recorded in full: it wakes the retries"
    assert live.reached_again("dp1") and not live.reached_again("dp1")
    assert live.quiet("dp1", beat, 4.0)


def test_the_agents_pace_stays_within_bounds_whatever_the_site_says() -> None:
    pace = HeartbeatPace(random.Random(1))
    assert pace.answered({"ok": True}) == DEFAULT_INTERVAL, "an old site: 2 s"
    assert pace.answered({"interval": 6}) == 6.0
    for said in (0, -5, 0.01, 1e9, float("nan"), float("inf"), True, "8", None):
        assert MIN_INTERVAL <= pace.answered({"interval": said}) <= MAX_INTERVAL, said
    failures = [pace.failed() for _ in range(20)]
    assert all(0 < f <= RETRY_MAX for f in failures), "a returning server waits seconds"
    assert pace.answered({"interval": 8}) == 8.0 and pace.failures == 0
    sheds = [pace.shed(4) for _ in range(20)]
    assert all(4 <= s <= SHED_MAX * 1.5 for s in sheds), sheds
    assert sheds[0] < sheds[3], "no back-off while shed"
    assert max(sheds) < 60, "back to normal within a minute"


def _lag_seen(pauses: list[float]) -> float:
    """The highest lateness ``watch_lag`` reported while the event loop was blocked for each
    of ``pauses`` seconds in turn (letting what is due run in between), then left idle."""

    async def run() -> float:
        admission = Admission()
        watcher = asyncio.create_task(admission.watch_lag())
        await asyncio.sleep(4 * LAG_TICK)
        seen = 0.0
        for pause in pauses:
            time.sleep(pause)  # the loop does nothing else meanwhile: a collection, a bug
            for _ in range(2):  # whatever is due runs (the watcher's look), then the next pause
                await asyncio.sleep(0)
            seen = max(seen, admission.lag)
        for _ in range(LAG_LOOKS + 1):
            await asyncio.sleep(LAG_TICK)
            seen = max(seen, admission.lag)
        watcher.cancel()
        return seen

    return asyncio.run(run())


def test_one_pause_of_the_event_loop_sheds_nothing_but_a_loop_late_at_every_look_does() -> None:
    assert _lag_seen([0.6]) <= LAG_LIMIT, "one pause counted as overload"
    assert _lag_seen([0.4] * (3 * LAG_LOOKS)) > LAG_LIMIT, "a loop late at every look passed"


def test_a_second_drop_of_the_interval_still_remembers_the_longest_handed_out() -> None:
    cadence = Cadence(10_000)  # 10 s
    cadence.follow(5_000, now=1000.0)  # 5 s
    cadence.follow(0, now=1001.0)  # 2 s: agents told 10 s a moment ago still wait it out
    assert cadence.longest(now=1002.0) == MAX_INTERVAL


def test_a_healthy_server_of_a_large_fleet_shows_online_between_its_heartbeats() -> None:
    server = ServerRecord("dp1", "http://dp1:8701", (), 0.0, last_seen=1000.0, disk_free=None)
    # 10,000 servers heartbeat every 10 s, written in batches every 2 s: 12.5 s is healthy
    assert online(server, 1012.5, online_after(10_000))
    assert not online(server, 1012.5, online_after(10)), "a small fleet heartbeats every 2 s"


def test_the_removed_servers_a_heartbeat_answer_names_are_read_whatever_it_holds() -> None:
    assert revoked_of({"interval": 2}) == frozenset()  # none removed lately
    assert revoked_of({"revoked": ["dp2", 7, None, "dp3"]}) == {"dp2", "dp3"}
    assert revoked_of({"revoked": "dp2"}) is None  # not a list: what was known stands
    assert len(revoked_of({"revoked": [f"s{i}" for i in range(5_000)]}) or ()) == MAX_REVOKED
