"""What a ``tcpdump -w`` capture of a lab cable carried: its TCP streams, put back together.

A capture is searched stream by stream, not packet by packet: a string that crossed the
cable split between two segments is in no single packet, but it is in the stream. Each
direction of each TCP connection is reassembled in sequence order (retransmitted and
overlapping bytes kept once); a byte missing from the capture (the kernel dropped the
packet, or the capture began mid-connection) is counted as a hole, so a test can insist that
it searched every byte that crossed.

Reads the classic pcap format that ``tcpdump -w`` writes, Ethernet frames (a veth's link
type), IPv4; other frames (ARP) are counted and skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

_MAGIC = (0xA1B2C3D4, 0xA1B23C4D)  # microsecond and nanosecond timestamps
LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_VLAN = 0x8100
PROTO_TCP = 6
SYN = 0x02
SEQ_SPACE = 1 << 32


class PcapError(ValueError):
    pass


@dataclass
class Stream:
    """One direction of one TCP connection: ``src`` -> ``dst`` (``host:port`` each)."""

    src: str
    dst: str
    segments: dict[int, bytes] = field(default_factory=dict)  # relative seq -> payload
    isn: int | None = None  # sequence number of the SYN, or of the first byte seen
    saw_syn: bool = False

    def add(self, seq: int, flags: int, payload: bytes) -> None:
        if flags & SYN:
            self.isn, self.saw_syn = seq, True
            seq += 1  # the SYN takes one sequence number; data starts after it
        elif self.isn is None:
            self.isn = (seq - 1) % SEQ_SPACE  # caught mid-connection: from what is seen
        if payload:
            rel = (seq - self.isn - 1) % SEQ_SPACE
            kept = self.segments.get(rel, b"")
            if len(payload) > len(kept):  # a retransmission may carry more than the first
                self.segments[rel] = payload

    def reassemble(self) -> tuple[bytes, int]:
        """``(bytes in order, bytes missing)``: overlaps kept once, holes skipped."""
        out = bytearray()
        missing = 0
        for rel in sorted(self.segments):
            payload = self.segments[rel]
            end = rel + len(payload)
            if end <= len(out) + missing:
                continue  # all of it was seen already
            start = len(out) + missing
            if rel > start:
                missing += rel - start  # a hole: bytes that crossed but are not in the capture
                start = rel
            out += payload[start - rel :]
        return bytes(out), missing


@dataclass
class Capture:
    """A whole capture: every TCP stream, the raw file, and what else it held."""

    path: Path
    raw: bytes
    streams: dict[tuple[str, str], Stream]
    packets: int
    other_frames: int

    @cached_property
    def payloads(self) -> dict[tuple[str, str], tuple[bytes, int]]:
        """``(src, dst) -> (reassembled bytes, bytes missing)`` for every stream with data."""
        return {k: s.reassemble() for k, s in self.streams.items() if s.segments}

    def payload_bytes(self) -> int:
        return sum(len(data) for data, _ in self.payloads.values())

    def missing_bytes(self) -> int:
        return sum(missing for _, missing in self.payloads.values())

    def mid_connection(self) -> list[tuple[str, str]]:
        """Streams whose start the capture did not see (their first bytes may be missing)."""
        return [k for k, s in self.streams.items() if s.segments and not s.saw_syn]


def read(path: Path) -> Capture:
    raw = path.read_bytes()
    if len(raw) < 24:
        raise PcapError(f"{path}: {len(raw)} bytes, not a pcap file")
    if struct.unpack("<I", raw[:4])[0] in _MAGIC:
        order = "<"
    elif struct.unpack(">I", raw[:4])[0] in _MAGIC:
        order = ">"
    else:
        raise PcapError(f"{path}: not a pcap file (magic {raw[:4].hex()}; pcapng is not read)")
    linktype = struct.unpack(order + "I", raw[20:24])[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {linktype}, only Ethernet (1) is read")
    streams: dict[tuple[str, str], Stream] = {}
    packets = other = 0
    offset = 24
    while offset + 16 <= len(raw):
        _sec, _frac, caplen, _wirelen = struct.unpack(order + "IIII", raw[offset : offset + 16])
        frame = raw[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < caplen:
            raise PcapError(f"{path}: truncated at packet {packets + 1}")
        packets += 1
        if not _tcp(frame, streams):
            other += 1
    return Capture(path, raw, streams, packets, other)


def _tcp(frame: bytes, streams: dict[tuple[str, str], Stream]) -> bool:
    """Add an Ethernet frame's TCP segment to its stream; False if it carries none."""
    if len(frame) < 14:
        return False
    ethertype, at = struct.unpack("!H", frame[12:14])[0], 14
    if ethertype == ETHERTYPE_VLAN and len(frame) >= 18:
        ethertype, at = struct.unpack("!H", frame[16:18])[0], 18
    if ethertype != ETHERTYPE_IPV4 or len(frame) < at + 20:
        return False
    ihl = (frame[at] & 0x0F) * 4
    total = struct.unpack("!H", frame[at + 2 : at + 4])[0]
    if frame[at + 9] != PROTO_TCP:
        return False
    src = ipaddress.IPv4Address(frame[at + 12 : at + 16])
    dst = ipaddress.IPv4Address(frame[at + 16 : at + 20])
    # a segmentation-offload frame bigger than 64 KiB says 0: it runs to the frame's end
    end = at + total if total else len(frame)
    tcp = frame[at + ihl : end]
    if len(tcp) < 20:
        return False
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    data_offset = (tcp[12] >> 4) * 4
    flags = tcp[13]
    key = (f"{src}:{sport}", f"{dst}:{dport}")
    stream = streams.setdefault(key, Stream(*key))
    stream.add(seq, flags, tcp[data_offset:])
    return True
