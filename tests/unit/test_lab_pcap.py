"""The lab's capture reader (tests/lab/pcap.py) puts TCP streams back together: what the
TLS capture test searches must be every byte that crossed, in order, whatever the segments."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.lab import pcap

SRC, DST = "10.77.0.1", "10.77.0.11"
ISN = 0xFFFFFF00  # close to the top: the sequence numbers wrap inside the stream


def _frame(seq: int, payload: bytes, flags: int = 0x18) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 8700, 40000, seq % (1 << 32), 0, 5 << 4, flags, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0,
                     bytes(map(int, SRC.split("."))), bytes(map(int, DST.split("."))))  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload


def _write(path: Path, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    path.write_bytes(out)
    return path


def test_a_string_split_between_segments_out_of_order_and_retransmitted_is_found_once(
    tmp_path: Path,
) -> None:
    data = b"GET /" + b"0123456789abcdef" * 2 + b" HTTP/1.1\r\n"
    first, second, third = data[:12], data[12:30], data[30:]
    frames = [
        _frame(ISN, b"", flags=0x02),  # SYN
        _frame(ISN + 1 + 12, second),  # out of order
        _frame(ISN + 1, first),
        _frame(ISN + 1, first + second[:4]),  # a retransmission carrying more
        _frame(ISN + 1 + 30, third),
    ]
    capture = pcap.read(_write(tmp_path / "c.pcap", frames))
    assert capture.packets == 5 and capture.other_frames == 0
    ((key, (stream, missing)),) = capture.payloads.items()
    assert key == (f"{SRC}:8700", f"{DST}:40000")
    assert stream == data and missing == 0
    needle = b"0123456789abcdef" * 2
    assert needle not in capture.raw  # in no single frame: only the stream shows it
    assert capture.mid_connection() == []


def test_a_segment_missing_from_the_capture_is_counted_and_a_late_start_is_flagged(
    tmp_path: Path,
) -> None:
    frames = [_frame(5000, b"a" * 100), _frame(5200, b"c" * 100)]  # 5100..5199 never seen
    capture = pcap.read(_write(tmp_path / "c.pcap", frames))
    assert capture.missing_bytes() == 100
    assert capture.payload_bytes() == 200
    assert capture.mid_connection() == [(f"{SRC}:8700", f"{DST}:40000")]
