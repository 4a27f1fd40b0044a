"""When the site compresses a chunk stream (site/content_routes.py ``compress_next``): only
where the link is the bound and the machine has processor time to spare; what it reads of
the machine's processors (core/cpu.py)."""

from __future__ import annotations

from pathlib import Path

from packdist.core.cpu import CpuTimes
from packdist.site.content_routes import FAST_LINK, compress_next

SLOW = 10e6  # bytes/s: a WAN
WAITING = 0.95  # the stream spent 95% of its window waiting for the agent
IDLE = 0.7


def test_a_slow_link_that_the_stream_waits_on_with_cores_to_spare_gets_zstd() -> None:
    assert compress_next(False, SLOW, WAITING, IDLE)
    assert compress_next(True, SLOW, WAITING, IDLE)


def test_a_link_faster_than_the_compressor_goes_raw() -> None:
    assert not compress_next(True, 2 * FAST_LINK, WAITING, IDLE)


def test_a_stream_the_site_itself_holds_back_goes_raw() -> None:
    assert not compress_next(True, SLOW, 0.1, IDLE)


def test_a_machine_with_no_processor_to_spare_sends_raw_as_on_loopback() -> None:
    # on loopback the agent shares the cores: compressing takes from the transfer itself
    assert not compress_next(True, 0.6 * FAST_LINK, WAITING, 0.05)


def test_a_wan_stays_compressed_on_a_busy_machine() -> None:
    # at WAN rates compressing pays back whatever else the processors do
    assert compress_next(True, SLOW, WAITING, 0.05)
    assert compress_next(False, SLOW, WAITING, 0.05)


def test_a_stream_between_the_bounds_keeps_its_choice() -> None:
    between = (0.75 * FAST_LINK, 0.35, 0.2)
    assert compress_next(True, *between) and not compress_next(False, *between)


def test_the_idle_share_is_read_between_two_samples_of_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    first = CpuTimes.now(stat)
    stat.write_text("cpu  250 0 150 800 100 0 0 0 0 0\n")
    second = CpuTimes.now(stat)
    assert first is not None and second is not None
    assert second.idle_share_since(first) == 100 / 300
    assert second.idle_share_since(None) == 1.0  # unknown: as if idle (the old rule)
    assert CpuTimes.now(tmp_path / "absent") is None
    stat.write_text("intr 1 2 3\n")
    assert CpuTimes.now(stat) is None
