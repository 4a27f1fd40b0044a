"""Content-defined chunking: lossless, bounded chunk sizes, edits stay local."""

from __future__ import annotations

import io
import random
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packdist.core.chunking import (
    ALGORITHM,
    DEFAULT_PARAMS,
    READ_BUFFER,
    Chunker,
    ChunkerParams,
)
from packdist.core.digest import Digest

SMALL = ChunkerParams(avg=1024, min=256, max=4096)


def _random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _assert_sizes(chunks: list[bytes], params: ChunkerParams) -> None:
    assert all(len(c) > 0 for c in chunks), "no empty chunks"
    assert all(len(c) <= params.max for c in chunks), "no chunk above max"
    # Only the last chunk of a stream may be shorter than the minimum.
    assert all(len(c) >= params.min for c in chunks[:-1]), "no chunk below min but the last"


def _digests(chunks: list[bytes]) -> list[Digest]:
    return [Digest.of(c) for c in chunks]


def _shared_fraction(before: list[bytes], after: list[bytes]) -> float:
    old = set(_digests(before))
    new = _digests(after)
    return sum(1 for d in new if d in old) / len(new)


# --- lossless and bounded -----------------------------------------------------------------


@given(st.binary(max_size=20_000))
def test_any_bytes_reassemble_to_themselves(data: bytes) -> None:
    chunks = Chunker(SMALL).cut_bytes(data)
    assert b"".join(chunks) == data
    _assert_sizes(chunks, SMALL)


@settings(max_examples=60)
@given(st.integers(0, 2**32), st.integers(0, 200_000))
def test_random_buffers_reassemble_and_respect_min_max(seed: int, size: int) -> None:
    data = _random_bytes(seed, size)
    chunks = Chunker(SMALL).cut_bytes(data)
    assert b"".join(chunks) == data
    _assert_sizes(chunks, SMALL)
    if size > 4 * SMALL.max:
        assert len(chunks) >= size // SMALL.max


@settings(max_examples=30)
@given(st.integers(0, 2**32), st.integers(1, 64), st.integers(1, 40_000))
def test_low_entropy_input_is_cut_at_max(seed: int, period: int, repeats: int) -> None:
    """A repeating pattern has few natural cut points: chunks are forced at max size."""
    data = (_random_bytes(seed, period) * repeats)[:200_000]
    chunks = Chunker(SMALL).cut_bytes(data)
    assert b"".join(chunks) == data
    _assert_sizes(chunks, SMALL)


def test_empty_input_has_no_chunks() -> None:
    assert Chunker(SMALL).cut_bytes(b"") == []
    assert list(Chunker(SMALL).cut_stream(io.BytesIO(b""))) == []


def test_input_below_min_is_one_chunk() -> None:
    data = _random_bytes(1, SMALL.min - 1)
    assert Chunker(SMALL).cut_bytes(data) == [data]


def test_chunking_is_deterministic() -> None:
    data = _random_bytes(2, 300_000)
    assert Chunker(SMALL).cut_bytes(data) == Chunker(SMALL).cut_bytes(data)


def test_default_params_respect_min_max() -> None:
    data = _random_bytes(3, 4 * 1024 * 1024)
    chunks = Chunker().cut_bytes(data)
    assert b"".join(chunks) == data
    _assert_sizes(chunks, DEFAULT_PARAMS)
    assert len(chunks) > 4


# --- edits stay local ---------------------------------------------------------------------

EDITS = st.sampled_from(["overwrite", "insert", "delete"])


def _edit(data: bytes, kind: str, at: int, length: int) -> bytes:
    if kind == "overwrite":
        return data[:at] + bytes(b ^ 0xFF for b in data[at : at + length]) + data[at + length :]
    if kind == "insert":
        return data[:at] + b"\xa5" * length + data[at:]
    return data[:at] + data[at + length :]


@settings(max_examples=25, deadline=None)
@given(EDITS, st.floats(0.05, 0.95), st.integers(1, 100))
def test_an_edit_in_a_large_buffer_leaves_most_chunks_unchanged(
    kind: str, where: float, length: int
) -> None:
    data = _random_bytes(4, 2 * 1024 * 1024)
    at = int(len(data) * where)
    edited = _edit(data, kind, at, length)
    chunker = Chunker(SMALL)
    before, after = chunker.cut_bytes(data), chunker.cut_bytes(edited)
    assert b"".join(after) == edited
    assert _shared_fraction(before, after) >= 0.8
    # A local edit re-cuts the chunks around it until the cut points fall in step again
    # (a few dozen at most with these small parameters), never the ~1,600 of the buffer.
    new = set(_digests(after)) - set(_digests(before))
    assert len(new) <= 32, f"{len(new)} of {len(after)} chunks changed"


@pytest.mark.parametrize("kind", ["overwrite", "insert", "delete"])
def test_an_edit_in_the_middle_with_default_params_re_sends_few_chunks(kind: str) -> None:
    data = _random_bytes(5, 4 * 1024 * 1024)
    edited = _edit(data, kind, len(data) // 2, 10)
    before, after = Chunker().cut_bytes(data), Chunker().cut_bytes(edited)
    assert _shared_fraction(before, after) >= 0.8
    assert len(set(_digests(after)) - set(_digests(before))) <= 3


def test_an_edit_at_the_start_leaves_the_tail_unchanged() -> None:
    data = _random_bytes(6, 500_000)
    edited = b"prefix" + data
    before, after = Chunker(SMALL).cut_bytes(data), Chunker(SMALL).cut_bytes(edited)
    assert _digests(before)[-50:] == _digests(after)[-50:]


# --- streams and files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "params"),
    [
        (0, SMALL),
        (100, SMALL),
        (123_457, SMALL),
        (READ_BUFFER + 12_345, SMALL),  # crosses the read buffer's boundary
        (2 * READ_BUFFER + 7, DEFAULT_PARAMS),
    ],
)
def test_cut_file_and_cut_stream_equal_cut_bytes(
    tmp_path: Path, size: int, params: ChunkerParams
) -> None:
    data = _random_bytes(size, size)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    chunker = Chunker(params)
    expected = chunker.cut_bytes(data)
    from_file = [bytes(c) for c in chunker.cut_file(path)]
    with open(path, "rb") as f:
        from_stream = [bytes(c) for c in chunker.cut_stream(f)]
    assert from_file == expected
    assert from_stream == expected
    assert b"".join(from_file) == data


def test_cut_stream_works_on_a_non_file_stream() -> None:
    data = _random_bytes(7, 50_000)
    chunker = Chunker(SMALL)
    assert [bytes(c) for c in chunker.cut_stream(io.BytesIO(data))] == chunker.cut_bytes(data)


class _Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a pipe or a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        n = min(len(target), self._step, len(self._data))
        target[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class _ReadOnly:
    """A stream with ``read`` but no ``readinto``."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(min(n, 777) if n > 0 else n)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 300_000), st.integers(1, 70_000))
def test_short_reads_cut_like_one_buffer(seed: int, size: int, step: int) -> None:
    data = _random_bytes(seed, size)
    chunker = Chunker(SMALL)
    got = [bytes(c) for c in chunker.cut_stream(_Trickle(data, step))]  # type: ignore[arg-type]
    assert got == chunker.cut_bytes(data)


def test_a_stream_without_readinto_is_cut_like_one_buffer() -> None:
    data = _random_bytes(9, 200_000)
    chunker = Chunker(SMALL)
    got = [bytes(c) for c in chunker.cut_stream(_ReadOnly(data))]  # type: ignore[arg-type]
    assert got == chunker.cut_bytes(data)


def test_one_chunker_cuts_many_files_in_turn(tmp_path: Path) -> None:
    chunker = Chunker(SMALL)
    blobs = [_random_bytes(i, n) for i, n in enumerate([50_000, 0, 10, 300_000, 4097])]
    for i, blob in enumerate(blobs):
        (tmp_path / f"f{i}").write_bytes(blob)
    # A cut abandoned part way must not disturb the next one.
    abandoned = cast(Generator[memoryview, None, None], chunker.cut_file(tmp_path / "f3"))
    next(abandoned)
    abandoned.close()
    for i, blob in enumerate(blobs):
        assert [bytes(c) for c in chunker.cut_file(tmp_path / f"f{i}")] == chunker.cut_bytes(blob)


# --- parameters ---------------------------------------------------------------------------


def test_params_json_round_trip() -> None:
    for params in (DEFAULT_PARAMS, SMALL):
        doc = params.to_json()
        assert doc["algorithm"] == ALGORITHM
        assert ChunkerParams.from_json(doc) == params


def test_params_refuse_an_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown chunking algorithm"):
        ChunkerParams.from_json({"algorithm": "rabin", "avg": 1, "min": 1, "max": 1})
    with pytest.raises(ValueError):
        ChunkerParams.from_json({"avg": 1, "min": 1, "max": 1})


def test_different_params_cut_differently() -> None:
    data = _random_bytes(8, 1_000_000)
    small = Chunker(SMALL).cut_bytes(data)
    default = Chunker().cut_bytes(data)
    assert len(small) > len(default)
    assert b"".join(small) == b"".join(default) == data
