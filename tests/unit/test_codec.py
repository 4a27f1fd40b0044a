"""The chunk codec: any chunk round-trips, whatever its base; bad payloads are refused."""

from __future__ import annotations

import os
import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from packdist.core import codec
from packdist.core.codec import Encoding, decode, encode
from packdist.core.digest import Digest
from packdist.errors import DecodeError

ALL = codec.ALL


def roundtrip(data: bytes, base: bytes | None, accept: frozenset[Encoding] = ALL) -> Encoding:
    encoding, payload = encode(data, accept, base)
    assert encoding in accept | {Encoding.RAW}
    assert len(payload) <= len(data)
    assert decode(encoding, payload, len(data), Digest.of(data), base) == data
    return encoding


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40_000), st.one_of(st.none(), st.binary(max_size=40_000)))
def test_any_chunk_round_trips_with_any_base(data: bytes, base: bytes | None) -> None:
    roundtrip(data, base)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=20_000), st.integers(0, 2**32 - 1))
def test_an_edited_chunk_round_trips_against_its_old_self(base: bytes, seed: int) -> None:
    rnd = random.Random(seed)
    new = bytearray(base)
    at = rnd.randrange(len(new))
    new[at : at + 100] = rnd.randbytes(min(100, len(new) - at))
    roundtrip(bytes(new), base)


def test_a_chunk_with_small_edits_travels_as_little_more_than_the_edits() -> None:
    old = os.urandom(128 * 1024)
    new = bytearray(old)
    new[5000:8000] = os.urandom(3000)
    encoding, payload = encode(bytes(new), ALL, old)
    assert encoding is Encoding.ZSTD_BASE
    assert len(payload) < 4000
    assert decode(encoding, payload, len(new), Digest.of(bytes(new)), old) == new


def test_random_data_goes_raw_and_text_goes_zstd() -> None:
    noise = os.urandom(200_000)
    assert encode(noise, ALL) == (Encoding.RAW, noise)
    text = b"".join(b"line %d of some source file\n" % i for i in range(10_000))
    encoding, payload = encode(text, ALL)
    assert encoding is Encoding.ZSTD and len(payload) < len(text) // 4


def test_only_accepted_encodings_are_used() -> None:
    text = b"abc" * 100_000
    assert encode(text, frozenset({Encoding.RAW}))[0] is Encoding.RAW
    assert encode(text, frozenset({Encoding.RAW, Encoding.ZSTD}), base=text)[0] is Encoding.ZSTD
    assert codec.parse_accept(["zstd", "bogus", 3]) == {Encoding.RAW, Encoding.ZSTD}


def test_a_corrupted_payload_is_refused_naming_the_chunk() -> None:
    text = b"hello world " * 10_000
    digest = Digest.of(text)
    encoding, payload = encode(text, ALL)
    broken = payload[:20] + bytes(b ^ 0x5A for b in payload[20:40]) + payload[40:]
    with pytest.raises(DecodeError, match=f"cannot decode chunk {digest.short}… from the site"):
        decode(encoding, broken, len(text), digest)
    with pytest.raises(DecodeError, match="not a zstd frame"):
        decode(Encoding.ZSTD, b"garbage!" * 4, len(text), digest)
    with pytest.raises(DecodeError, match="unknown encoding 7"):
        decode(7, payload, len(text), digest)
    with pytest.raises(DecodeError, match="bytes, expected"):
        decode(Encoding.RAW, text[:-1], len(text), digest)


def test_output_beyond_the_expected_size_is_refused() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * (64 << 20))
    digest = Digest.of(b"small")
    with pytest.raises(DecodeError, match="frame declares 67108864 bytes, expected 5"):
        decode(Encoding.ZSTD, bomb, 5, digest)
    hidden = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 << 20))
    with pytest.raises(DecodeError, match="expected 5"):
        decode(Encoding.ZSTD, hidden, 5, digest)


def test_a_delta_needs_the_base_it_was_made_against() -> None:
    old = os.urandom(64 * 1024)
    new = old[:30_000] + b"edit" + old[30_004:]
    digest = Digest.of(new)
    encoding, payload = encode(new, ALL, old)
    assert encoding is Encoding.ZSTD_BASE
    with pytest.raises(DecodeError, match="did not offer"):
        decode(encoding, payload, len(new), digest, None)
    try:
        out = decode(encoding, payload, len(new), digest, os.urandom(64 * 1024))
    except DecodeError:
        return  # refused: fine
    assert out != new  # or decoded to other bytes, which the digest check then refuses
