"""The arithmetic of rollouts, with no store: wave sizes, the servers each wave takes, the
spreading of a group across locations, and when a running wave is judged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist.errors import UserError
from packdist.service.rollout_plan import cut_waves, judge, parse_waves, spread_locations

SERVERS = [f"dp{n}" for n in range(1, 21)]


def test_waves_are_cumulative_counts_and_percentages_rounded_up() -> None:
    waves = cut_waves(SERVERS, parse_waves("1, 12%,50%,100%"))
    assert [len(w) for w in waves] == [1, 2, 7, 10]
    assert waves[0] == ["dp1"] and waves[1] == ["dp2", "dp3"]


def test_a_count_past_the_number_of_targets_means_all_of_them() -> None:
    assert cut_waves(SERVERS[:3], parse_waves("2,50")) == [["dp1", "dp2"], ["dp3"]]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1,x", "wave 2 'x' is not a count or a percentage"),
        ("0,100%", "wave 1 0 is not a whole count of 1 or more"),
        ("1.5,100%", "not a whole count"),
        ("150%", "not between 0% and 100%"),
        ("", "wave 1 '' is not a count"),
    ],
)
def test_a_wave_that_is_not_a_size_is_refused_with_its_place(text: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        parse_waves(text)


def test_a_wave_that_adds_no_server_is_refused() -> None:
    with pytest.raises(UserError, match=r"wave 2 .* adds no server to the 10 before it"):
        cut_waves(SERVERS, parse_waves("50%,10,100%"))


def test_waves_that_stop_short_of_every_target_are_refused() -> None:
    with pytest.raises(UserError, match="reach 10 of the 20 servers; make the last one 100%"):
        cut_waves(SERVERS, parse_waves("1,50%"))


@given(st.lists(st.integers(1, 200), min_size=1, max_size=6), st.integers(1, 300))
def test_every_target_is_in_exactly_one_wave_in_the_order_given(
    counts: list[int], total: int
) -> None:
    targets = [f"s{n}" for n in range(total)]
    sizes = parse_waves(",".join(str(c) for c in sorted(set(counts))) + ",100%")
    try:
        waves = cut_waves(targets, sizes)
    except UserError:
        return  # a wave that adds nothing (counts past the total): refused, as tested above
    assert [s for w in waves for s in w] == targets
    assert all(waves)


def test_servers_spread_so_the_first_wave_is_not_one_location() -> None:
    where = {f"hq{n}": "hq" for n in range(6)} | {"br0": "branch", "br1": "branch"}
    spread = spread_locations(sorted(where), where)
    assert sorted(spread) == sorted(where)
    assert {where[s] for s in spread[:3]} == {"hq", "branch"}
    assert [s for s in spread if s.startswith("hq")] == [f"hq{n}" for n in range(6)]


@given(st.dictionaries(st.text("ab", min_size=1, max_size=4), st.sampled_from("xyz"), max_size=30))
def test_spreading_keeps_every_server_and_each_locations_own_order(where: dict[str, str]) -> None:
    servers = sorted(where)
    spread = spread_locations(servers, where)
    assert sorted(spread) == servers
    for place in set(where.values()):
        assert [s for s in spread if where[s] == place] == [s for s in servers if where[s] == place]


def test_a_wave_fails_as_soon_as_more_than_the_threshold_failed() -> None:
    two_of_ten = judge({"installed": 1, "failed": 2, "sending": 7}, 0, 600, 10, now=5)
    assert (two_of_ten.passed, two_of_ten.failed) == (False, 2)
    one_of_ten = judge({"installed": 1, "failed": 1, "sending": 8}, 0, 600, 10, now=5)
    assert one_of_ten.passed is None  # 10% is not more than 10%: the others may yet install


def test_a_wave_passes_once_every_server_installed() -> None:
    assert judge({"installed": 4}, 0, 600, 0, now=1).passed is True


def test_a_server_still_not_installed_at_the_timeout_counts_as_failed() -> None:
    counts = {"installed": 3, "retrying": 1}
    assert judge(counts, 0, 600, 0, now=599).passed is None
    verdict = judge(counts, 0, 600, 0, now=600)
    assert (verdict.passed, verdict.failed, verdict.waiting) == (False, 1, 1)
    assert judge(counts, 0, 600, 25, now=600).passed is True  # 1 of 4 within 25%


def test_a_small_location_is_in_the_first_small_wave() -> None:
    where = {"hq1": "hq", "hq2": "hq", "hq3": "hq", "br1": "branch"}
    assert set(spread_locations(["hq1", "hq2", "hq3", "br1"], where)[:2]) == {"hq1", "br1"}
