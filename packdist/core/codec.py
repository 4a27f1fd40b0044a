"""How a chunk travels: raw, zstd, or zstd against a base chunk the receiver already holds.

* ``RAW`` — the chunk's bytes as they are.
* ``ZSTD`` — one zstd frame of the chunk, sent only where it pays: a cheap probe (the first
  16 KiB at level 1) must shrink by 10% before the whole chunk is compressed, and the
  result must save 10% again, else the chunk goes raw. Random data costs one probe.
* ``ZSTD_BASE`` — one zstd frame compressed with the base chunks' bytes (an earlier
  version's chunks that the receiver holds, concatenated in the order named) as a
  raw-content dictionary: a chunk with scattered small edits against its old self shrinks
  to little more than the edits. Sent only when it saves 10% too.

:func:`encode` runs on the sender, :func:`decode` on the receiver; both run in worker
threads (zstd releases the GIL). :func:`decode` never produces more than the chunk's
expected size (the frame must declare exactly that content size), so a corrupt or hostile
payload cannot make it allocate more; any failure is a :class:`DecodeError` naming the
chunk. The caller still verifies the decoded bytes against the chunk's digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import zstandard

from packdist.core.digest import Digest
from packdist.errors import DecodeError


class Encoding(IntEnum):
    """How one frame's payload encodes its chunk (the byte on the wire)."""

    RAW = 0  # the chunk's bytes
    ZSTD = 1  # a zstd frame of the chunk
    ZSTD_BASE = 2  # a zstd frame against the base chunks as a raw-content dictionary

    @property
    def label(self) -> str:
        """The name used in requests (``"accept": [...]``)."""
        return _LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> Encoding | None:
        return next((e for e in cls if e.label == label), None)


_LABELS = {Encoding.RAW: "raw", Encoding.ZSTD: "zstd", Encoding.ZSTD_BASE: "zstd-base"}

PROBE_BYTES = 16 * 1024
PROBE_LEVEL = 1
LEVEL = 1  # plain zstd: ~1.5x the speed of level 3 for 95% of its ratio on text (docs/transfer.md)
BASE_LEVEL = 3  # with a base: below 3, zstd misses most matches in a raw dictionary of
#                several chunks (measured: 9.5 MB of edited chunks -> 8.5 MB at level 1,
#                1.8 MB at 2, 0.18 MB at 3; level 5 gains nothing more)
MIN_SAVING = 0.10  # an encoding must save at least this share of the chunk to be used
MAX_BASES = 6  # base chunks per chunk (those covering its range, and the next)
MAX_BASE_BYTES = 2 * 1024 * 1024  # of all the bases of one chunk together


def _pays(encoded: int, size: int) -> bool:
    return encoded <= size * (1.0 - MIN_SAVING)


def encode(
    data: bytes, accept: frozenset[Encoding], base: bytes | None = None
) -> tuple[Encoding, bytes]:
    """The cheapest acceptable encoding of ``data`` that pays, and its payload.

    ``base``: the bytes of the receiver's base chunks (already verified by the caller), or
    None. Raw is always acceptable.
    """
    if not data:
        return Encoding.RAW, data
    if base and Encoding.ZSTD_BASE in accept:
        dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        packed = zstandard.ZstdCompressor(
            level=BASE_LEVEL, dict_data=dictionary, write_content_size=True
        ).compress(data)
        # the base covers plain compression too: if it does not pay, plain zstd will not
        return (
            (Encoding.ZSTD_BASE, packed)
            if _pays(len(packed), len(data))
            else (
                Encoding.RAW,
                data,
            )
        )
    if Encoding.ZSTD not in accept:
        return Encoding.RAW, data
    if len(data) > PROBE_BYTES:
        probe = data[:PROBE_BYTES]
        probed = zstandard.ZstdCompressor(level=PROBE_LEVEL).compress(probe)
        if not _pays(len(probed), len(probe)):
            return Encoding.RAW, data
    packed = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True).compress(data)
    return (Encoding.ZSTD, packed) if _pays(len(packed), len(data)) else (Encoding.RAW, data)


def decode(
    encoding: int,
    payload: bytes | memoryview,
    size: int,
    digest: Digest,
    base: bytes | None = None,
    source: str = "the site",
) -> bytes | memoryview:
    """The chunk ``digest`` of ``size`` bytes from its ``payload``; :class:`DecodeError` if
    it cannot be decoded to exactly ``size`` bytes (the caller verifies the digest).

    ``base``: the bytes of the base chunks named in the request, in that order, already
    verified against their digests (``ZSTD_BASE`` needs them).
    """

    def refuse(why: str) -> DecodeError:
        return DecodeError(
            f"cannot decode chunk {digest.short}… from {source}: {why}", digest=digest.hex
        )

    if encoding == Encoding.RAW:
        if len(payload) != size:
            raise refuse(f"{len(payload)} bytes, expected {size}")
        return payload
    if encoding not in (Encoding.ZSTD, Encoding.ZSTD_BASE):
        raise refuse(f"unknown encoding {encoding}")
    if encoding == Encoding.ZSTD_BASE and not base:
        raise refuse("encoded against a base this agent did not offer")
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise refuse(f"not a zstd frame ({exc})") from exc
    if declared != size:  # also refuses frames that do not declare their size (-1)
        raise refuse(f"frame declares {declared} bytes, expected {size}")
    if encoding == Encoding.ZSTD_BASE:
        assert base is not None
        dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        decompressor = zstandard.ZstdDecompressor(dict_data=dictionary)
    else:
        decompressor = zstandard.ZstdDecompressor()
    try:
        data = decompressor.decompress(payload, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise refuse(str(exc)) from exc
    if len(data) != size:
        raise refuse(f"decoded to {len(data)} bytes, expected {size}")
    return data


def parse_accept(labels: Sequence[object]) -> frozenset[Encoding]:
    """The encodings named in a request (unknown names ignored); raw is always in."""
    found = {Encoding.from_label(x) for x in labels if isinstance(x, str)}
    return frozenset(e for e in found if e is not None) | {Encoding.RAW}


ALL = frozenset(Encoding)
