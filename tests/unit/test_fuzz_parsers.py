"""Fuzzing what an agent decodes from the network: manifests, chunk-stream frames and chunk
payloads (zstd, zstd against a base). Whatever the bytes, each raises nothing but a
:class:`PackdistError` (the project's own, answered as one line), and a decoder never
produces more than the chunk's size. Example counts: tests/fuzzing.py."""

from __future__ import annotations

import io
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from packdist.agent.sources import PEER_MAX_PAYLOAD
from packdist.core.codec import Encoding, decode
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest, ManifestError
from packdist.errors import PackdistError
from packdist.http import HEADER_SIZE, frame_header
from packdist.protocol.chunk_stream import read_frames
from tests.fuzzing import fuzz, tried
from tests.unit.test_manifest import _canonical_doc, _doc, _sample

VALID = _sample().canonical()

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e999, -1e999, 10**400, "1e999", "", "..", "/", "\0", "a" * 300])
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _parse_refuses_cleanly(data: bytes) -> None:
    try:
        m = Manifest.parse(data)
    except PackdistError:
        return
    assert m.canonical() == data  # accepted: then it is exactly its canonical form


# --- manifests ------------------------------------------------------------------------------


@fuzz(300)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_refused_as_a_manifest_error(data: bytes) -> None:
    tried("manifest parser: arbitrary bytes")
    _parse_refuses_cleanly(data)


@fuzz(400)
@given(st.data())
def test_a_valid_manifest_with_bytes_mutated_is_refused_cleanly(data: st.DataObject) -> None:
    tried("manifest parser: byte-mutated valid manifests")
    blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(blob) - 1))
        how = data.draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if how == "flip":
            blob[at] ^= data.draw(st.integers(1, 255))
        elif how == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del blob[at : at + data.draw(st.integers(1, 20))]
        else:
            blob[at:at] = blob[at : at + data.draw(st.integers(1, 40))]
    _parse_refuses_cleanly(bytes(blob))


def _set(doc: Any, path: list[Any], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _paths(doc: Any, prefix: list[Any]) -> list[list[Any]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, [*prefix, k])
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, [*prefix, i])
    return out


@fuzz(500)
@given(st.data())
def test_a_valid_manifest_with_fields_replaced_is_refused_cleanly(data: st.DataObject) -> None:
    """The mutated document is written back in canonical form, so the parser's checks of the
    fields themselves are reached, not just the canonical-form check."""
    tried("manifest parser: field-mutated valid manifests (canonical)")
    doc = _doc()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc, [])))
        _set(doc, path, data.draw(json_values))
    try:
        blob = _canonical_doc(doc)
    except ValueError:  # e.g. an integer too long to print: not a manifest anyone can send
        return
    _parse_refuses_cleanly(blob)


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-100k"),
        pytest.param(b'{"entries":' + b"[" * 50_000, id="nested-unclosed"),
        pytest.param(VALID.replace(b'"size":18', b'"size":1e999'), id="size-infinite"),
        pytest.param(VALID.replace(b'"mtime_ns":7', b'"mtime_ns":1e999', 1), id="mtime-inf"),
        pytest.param(VALID.replace(b'"avg":', b'"avg":1e999,"x":', 1), id="avg-infinite"),
        pytest.param(VALID.replace(b'"chunker":{', b'"chunker":[{', 1), id="chunker-list"),
    ],
)
def test_hostile_manifests_raise_only_the_projects_error(blob: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.parse(blob)


def test_a_manifest_whose_chunker_is_not_an_object_is_refused() -> None:
    doc = _doc()
    doc["chunker"] = ["fastcdc"]
    with pytest.raises(ManifestError, match="malformed manifest"):
        Manifest.parse(_canonical_doc(doc))
    doc = _doc()
    [entry, *_] = [e for e in doc["entries"] if e["type"] == "file" and e["chunks"]]
    entry["size"] = 1e999
    entry["chunks"] = [[entry["chunks"][0][0], 1e999]]
    with pytest.raises(ManifestError, match="malformed manifest"):
        Manifest.parse(_canonical_doc(doc))


# --- chunk-stream frames --------------------------------------------------------------------


def _frames(stream: bytes, max_payload: int) -> list[Any]:
    return list(read_frames(io.BytesIO(stream), "http://peer", max_payload))


@st.composite
def frame_streams(draw: st.DrawFn) -> bytes:
    """Frames that are well formed, lie about their length, announce huge payloads, carry an
    error mark or stop half way; and plain noise."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        payload = draw(st.binary(max_size=200))
        length = draw(st.sampled_from([len(payload), len(payload) + 1, 0, 2**32 - 1,
                                       PEER_MAX_PAYLOAD + 1]))  # fmt: skip
        encoding = draw(st.sampled_from([0, 1, 2, 0xFE, 0xFF, 7]))
        size = draw(st.integers(0, 2**32 - 1))
        digest = Digest(draw(st.binary(min_size=32, max_size=32)))
        parts.append(frame_header(digest, encoding, size, length) + payload)
    stream = b"".join(parts)
    if draw(st.booleans()) and stream:
        stream = stream[: draw(st.integers(0, len(stream)))]
    if draw(st.integers(0, 4)) == 0:
        stream = draw(st.binary(max_size=300))
    return stream


@fuzz(500)
@given(frame_streams())
def test_any_chunk_stream_yields_bounded_frames_or_a_transfer_error(stream: bytes) -> None:
    tried("chunk-stream frame decoding")
    try:
        frames = _frames(stream, PEER_MAX_PAYLOAD)
    except PackdistError:
        return
    assert sum(HEADER_SIZE + len(f.payload) for f in frames) == len(stream)
    assert all(len(f.payload) <= PEER_MAX_PAYLOAD for f in frames)


# --- chunk payloads (raw, zstd, zstd against a base) ----------------------------------------

BASE = bytes(range(256)) * 64


def _zstd(data: bytes, with_size: bool = True, base: bytes | None = None) -> bytes:
    if base is not None:
        d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdCompressor(dict_data=d, write_content_size=with_size).compress(data)
    return zstandard.ZstdCompressor(write_content_size=with_size).compress(data)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[int, bytes, int, bytes | None]:
    content = draw(st.binary(max_size=3000))
    size = draw(st.sampled_from([len(content), len(content) + 1, max(0, len(content) - 1), 0,
                                 1 << 20, 4 << 20]))  # fmt: skip
    base = draw(st.sampled_from([None, BASE, b"", b"other base"]))
    kind = draw(st.sampled_from(["raw", "zstd", "zstd-nosize", "zstd-base", "bomb", "noise",
                                 "two-frames", "truncated"]))  # fmt: skip
    if kind == "raw":
        payload = content
    elif kind == "zstd":
        payload = _zstd(content)
    elif kind == "zstd-nosize":
        payload = _zstd(content, with_size=False)
    elif kind == "zstd-base":
        payload = _zstd(content, base=BASE)
    elif kind == "bomb":  # tiny on the wire, 64 MiB decoded
        payload = _zstd(b"\0" * (64 << 20), with_size=draw(st.booleans()))
    elif kind == "two-frames":
        payload = _zstd(content) + _zstd(b"\0" * (8 << 20))
    elif kind == "truncated":
        whole = _zstd(content)
        payload = whole[: draw(st.integers(0, len(whole)))]
    else:
        payload = draw(st.binary(max_size=500))
    encoding = draw(st.sampled_from([*Encoding, 3, 0xFE, 0xFF, -1]))
    return int(encoding), payload, size, base


_BOMB = _zstd(b"\0" * (64 << 20))


@fuzz(300)
@given(payloads())
def test_a_chunk_payload_decodes_to_its_size_or_is_a_decode_error(
    case: tuple[int, bytes, int, bytes | None],
) -> None:
    tried("chunk payload decoding (raw, zstd, zstd-base)")
    encoding, payload, size, base = case
    digest = Digest.of(b"whatever")
    try:
        data = decode(encoding, payload, size, digest, base)
    except PackdistError:
        return
    assert len(data) == size  # never more than the chunk's size, however it was encoded


def test_a_zstd_bomb_is_refused_without_being_decoded() -> None:
    for size in (1000, 1 << 20):
        with pytest.raises(PackdistError, match="declares"):
            decode(Encoding.ZSTD, _BOMB, size, Digest.of(b"x"))
